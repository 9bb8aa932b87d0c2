# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Device drivers over loopback: setpoints with read-back, installer limits, revert refresh, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import hold_setpoints, read_all
from test_modbus_harness import (  # pytest puts tests/ on sys.path
    DRIVERS,
    RegisterImage,
    ServerThread,
    SimUnit,
    leak_check,  # noqa: F401 - autouse fixture
    run,
    server_thread,  # noqa: F401 - fixture
    unit_for,
)
from test_sunspec import image_of, inverter_models, model, storage_models

from hubctl.cli.main import main as cli_main
from hubctl.codec.registers import Function
from hubctl.codec.regmap import RegisterMap, load_map, parse_map
from hubctl.config.devices import Device as DeviceConfig
from hubctl.devices import build_device
from hubctl.devices.base import Device, FallbackResult, Reading, SetpointResult
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.devices.sunspec import SunSpecDevice
from hubctl.errors import (
    CommandNotConfirmedError,
    CommandRejectedError,
    DeviceConfigError,
    DeviceError,
    DeviceUnavailableError,
)
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

HOLDING = Function.HOLDING
WMAXLIMPCT = 40002 + 68 + 52 + 28 + 32 + 5  # common, 103, 120, 121 before 123; WMaxLimPct at offset 5


def config(role: str, driver: str, port: int, device_id: str = "dev") -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": device_id,
            "company": None if role == "park_meter" else "bakery",
            "role": role,
            "driver": driver,
            "modbus": {"host": "127.0.0.1", "port": port, "timeout_s": 2},
        }
    )


def with_device(
    make: Callable[[ConnectionPool], Device],
    body: Callable[[Device], Awaitable[Any]],
    *,
    timeout_s: float = 20,
) -> Any:
    async def main() -> Any:
        async with ConnectionPool(backoff_initial_s=0.05, backoff_max_s=0.2) as pool:
            return await body(make(pool))

    return run(main, timeout_s=timeout_s)


def writes_to(unit: SimUnit, address: int) -> list[list[int]]:
    return [words for at, words in unit.writes if at == address]


def register_history(unit: SimUnit, address: int) -> list[int]:
    """Every value written to one register, whether alone or inside a longer write."""
    return [words[address - at] for at, words in unit.writes if at <= address < at + len(words)]


# --- SunSpec PV limit (123) ---------------------------------------------------------------------------------


def sunspec_pv(servers: ServerThread, **limits: int) -> tuple[SimUnit, Callable[[ConnectionPool], Device]]:
    unit = unit_for(image_of(inverter_models(**limits)))
    port = servers.serve([unit])
    return unit, lambda pool: SunSpecDevice(config("pv", "sunspec", port), pool.get("127.0.0.1", port))


def test_sunspec_pv_limit_is_written_with_a_revert_timer_and_read_back(servers: ServerThread) -> None:
    unit, make = sunspec_pv(servers)

    async def body(device: Device) -> SetpointResult:
        result = await device.set_pv_limit_kw(30.0)
        reading = await device.read()
        assert reading.values["limit_pct"] == pytest.approx(60.0)
        return result

    result = with_device(make, body)
    assert result.applied_kw == pytest.approx(30.0)
    assert result.confirmed_kw == pytest.approx(30.0)
    assert result.limited_by is None
    assert result.refresh_every_s == pytest.approx(20.0)  # a third of the 60 s revert timer
    # one request: WMaxLimPct 60.0 % (SF -1), WinTms as it was, RvrtTms 60 s, RmpTms as it was, Ena 1
    assert unit.writes == [(WMAXLIMPCT, [600, 0, 60, 0, 1])]


def test_sunspec_pv_limit_out_of_bounds_is_rejected_before_writing(servers: ServerThread) -> None:
    unit, make = sunspec_pv(servers)

    async def body(device: Device) -> None:
        for kw in (-1.0, 50.5, float("nan")):
            with pytest.raises(CommandRejectedError, match=r"outside 0\.\.50 kW"):
                await device.set_pv_limit_kw(kw)

    with_device(make, body)
    assert unit.writes == []


def test_installer_static_limit_stays_the_ceiling(servers: ServerThread) -> None:
    unit, make = sunspec_pv(servers, limit_pct_raw=400, enabled=1, revert_s=0)  # 40 %, no revert: static

    async def body(device: Device) -> SetpointResult:
        result = await device.set_pv_limit_kw(30.0)  # 60 % asked
        lower = await device.set_pv_limit_kw(10.0)  # 20 %: stricter, allowed
        assert lower.applied_kw == pytest.approx(10.0)
        await device.release()
        return result

    result = with_device(make, body)
    assert result.applied_kw == pytest.approx(20.0)
    assert result.confirmed_kw == pytest.approx(20.0)
    assert result.limited_by == "installer limit 40 %"
    assert result.refresh_every_s is None  # written without a revert time: see devices.py
    # WMaxLimPct_RvrtTms: no revert, with both limits and with the release (the installer's static
    # limit written back whole: limit, no revert time, enabled)
    assert register_history(unit, WMAXLIMPCT + 2) == [0, 0, 0]
    assert register_history(unit, WMAXLIMPCT) == [400, 200, 400]  # release restores the installer's 40 %


def test_a_limit_with_a_revert_time_is_not_taken_for_the_installers(servers: ServerThread) -> None:
    _, make = sunspec_pv(servers, limit_pct_raw=400, enabled=1, revert_s=60)

    async def body(device: Device) -> SetpointResult:
        return await device.set_pv_limit_kw(30.0)

    result = with_device(make, body)
    assert result.applied_kw == pytest.approx(30.0)
    assert result.limited_by is None


# --- SunSpec battery (704 WSet) -----------------------------------------------------------------------------


def test_sunspec_battery_setpoint_is_bounded_written_and_read_back(servers: ServerThread) -> None:
    unit = unit_for(image_of(storage_models()))
    port = servers.serve([unit])

    async def body(device: Device) -> SetpointResult:
        with pytest.raises(CommandRejectedError, match=r"outside -5\.\.6 kW"):
            await device.set_battery_kw(6.5)
        result = await device.set_battery_kw(-3.5)
        reading = await device.read()
        assert reading.values["setpoint_kw"] == pytest.approx(-3.5)
        # one request: WSetEna 1, WSetMod 1 (W), WSet -3500 W (int32); then WSetRvrtTms 60 s, which
        # the device did not hold yet
        assert [words for _, words in unit.writes] == [[1, 1, 0xFFFF, 0xF254], [0, 60]]
        unit.writes.clear()
        again = await device.set_battery_kw(-2.0)  # right after a read: no read before the write
        assert again.confirmed_kw == pytest.approx(-2.0)
        assert [words for _, words in unit.writes] == [[1, 1, 0xFFFF, 0xF830]]  # the timer is held already
        return result

    result = with_device(
        lambda pool: SunSpecDevice(config("battery", "sunspec", port), pool.get("127.0.0.1", port)), body
    )
    assert result.confirmed_kw == pytest.approx(-3.5)
    assert result.refresh_every_s == pytest.approx(20.0)


def test_sunspec_124_battery_is_pinned_between_its_rate_bounds(servers: ServerThread) -> None:
    models = [
        model(1, Mn="Acme Storage"),
        model(103, W=-1500, W_SF=0),
        model(
            120,
            DERTyp=82,
            WRtg=60,
            WRtg_SF=2,
            MaxChaRte=50,
            MaxDisChaRte=60,
            MaxChaRte_SF=2,
            MaxDisChaRte_SF=2,
        ),
        model(
            124,
            WChaMax=50,
            WChaMax_SF=2,
            StorCtl_Mod=0,
            InWRte=10000,
            OutWRte=10000,
            InOutWRte_SF=-2,
            InOutWRte_RvrtTms=0,
            ChaState=500,
            ChaState_SF=-1,
        ),
    ]
    unit = unit_for(image_of(models))
    port = servers.serve([unit])

    async def body(device: Device) -> tuple[SetpointResult, float | None, float | None]:
        reading = await device.read()
        result = await device.set_battery_kw(2.0)
        await device.release()
        return result, reading.soc_pct, reading.power_kw

    result, soc, power = with_device(
        lambda pool: SunSpecDevice(config("battery", "sunspec", port), pool.get("127.0.0.1", port)), body
    )
    assert soc == pytest.approx(50.0)
    assert power == pytest.approx(-1.5)  # 124 has no power point: its inverter's W, + discharge
    assert result.confirmed_kw == pytest.approx(2.0, abs=0.001)
    written = [words for _, words in unit.writes]
    # one request from OutWRte: 33.33 % bounds discharging at 2 kW (of 6 kW MaxDisChaRte); InWRte
    # -40.00 % forces discharging of at least 2 kW (of 5 kW WChaMax). InOutWRte_WinTms between them
    # and the revert time is not implemented here, so the timer (60 s) goes in a request of its own
    assert written == [[3333, 0xF060], [60], [3], [0]]  # then StorCtl_Mod 3, and 0 on release


# --- Fallback values (configure_fallback) -------------------------------------------------------------------


def storage_704(*, pct_rvrt: int | None = 0, installer_rvrt_w: int = 20000) -> list[Any]:
    """A 802 battery with 704 whose reversion is the installer's: +20 kW (discharge) when enabled."""
    control: dict[str, Any] = {
        "WSet": 0,
        "WSetRvrt": installer_rvrt_w,
        "WSet_SF": 0,
        "WSetPct_SF": -2,
        "WSetEna": 0,
        "WSetMod": 1,
        "WSetEnaRvrt": 1,
        "WSetRvrtTms": 0,
    }
    if pct_rvrt is not None:
        control["WSetPctRvrt"] = pct_rvrt
    return [*storage_models()[:-1], model(704, **control)]


def pv_704(*, limit_pct_raw: int = 1000, enabled: int = 0, rvrt_pct_raw: int = 1000) -> list[Any]:
    """A PV inverter whose limit is 704's (no 123), rated 50 kW (121 WMax), WMaxLimPct_SF -1."""
    return [
        *inverter_models()[:-1],
        model(
            704,
            WMaxLimPctEna=enabled,
            WMaxLimPct=limit_pct_raw,
            WMaxLimPctRvrt=rvrt_pct_raw,
            WMaxLimPctEnaRvrt=0,
            WMaxLimPctRvrtTms=0,
            WMaxLimPct_SF=-1,
        ),
    ]


def sunspec_device(
    servers: ServerThread, role: str, models: list[Any]
) -> tuple[SimUnit, Callable[..., Device]]:
    unit = unit_for(image_of(models))
    port = servers.serve([unit])
    return unit, lambda pool: SunSpecDevice(config(role, "sunspec", port), pool.get("127.0.0.1", port))


def written_points(unit: SimUnit, model_704: Any) -> dict[str, list[int]]:
    """Which 704 points were written (by name, the last words each got), alone or inside a longer write."""
    out: dict[str, list[int]] = {}
    for at, words in unit.writes:
        for name, p in model_704.points.items():
            if at <= p.address and p.address + p.size <= at + len(words):
                out[name] = words[p.address - at : p.address - at + p.size]
    return out


def test_sunspec_battery_falls_back_to_0_kw_not_the_installers_power(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "battery", storage_704())

    async def body(device: Device) -> tuple[FallbackResult, Any]:
        result = await device.configure_fallback()
        assert isinstance(device, SunSpecDevice)
        return result, (await device.models([704]))[704]

    result, control = with_device(make, body)
    assert result.configured
    assert result.fallback_kw == 0.0
    assert result.confirmed_kw == 0.0
    assert control.values["WSetRvrt"] == 0
    assert control.values["WSetPctRvrt"] == 0
    assert control.values["WSetEnaRvrt"] == 1
    assert written_points(unit, control) == {"WSetRvrt": [0, 0], "WSetPctRvrt": [0], "WSetEnaRvrt": [1]}


def test_sunspec_battery_without_a_percent_reversion_writes_the_watts_only(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "battery", storage_704(pct_rvrt=None))

    async def body(device: Device) -> Any:
        await device.configure_fallback()
        assert isinstance(device, SunSpecDevice)
        return (await device.models([704]))[704]

    control = with_device(make, body)
    assert control.values["WSetPctRvrt"] is None  # not implemented: left alone
    assert set(written_points(unit, control)) == {"WSetRvrt", "WSetEnaRvrt"}


def test_a_fallback_the_device_does_not_keep_is_not_confirmed(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "battery", storage_704())

    async def body(device: Device) -> None:
        assert isinstance(device, SunSpecDevice)
        enable = (await device.models([704]))[704].points["WSetEnaRvrt"]
        unit.revert_after(enable.address, 0.0, [0])  # the device drops the enable at once
        with pytest.raises(CommandNotConfirmedError, match="WSetEnaRvrt"):
            await device.configure_fallback()

    with_device(make, body)


def test_sunspec_124_battery_has_no_fallback_value_and_says_so_once(
    servers: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    models = [
        model(1, Mn="Acme Storage"),
        model(103, W=0, W_SF=0),
        model(120, DERTyp=82, WRtg=60, WRtg_SF=2),
        model(124, WChaMax=50, WChaMax_SF=2, StorCtl_Mod=0, InOutWRte_SF=-2, ChaState=500, ChaState_SF=-1),
    ]
    unit, make = sunspec_device(servers, "battery", models)
    caplog.set_level(logging.INFO, logger="hubctl.devices")

    async def body(device: Device) -> list[FallbackResult]:
        return [await device.configure_fallback(), await device.configure_fallback()]

    results = with_device(make, body)
    assert [r.configured for r in results] == [False, False]
    assert "model 124 has no reversion power" in results[0].detail
    assert unit.writes == []
    assert [r.getMessage() for r in caplog.records if "no fallback" in r.getMessage()] == [
        f"dev: no fallback configured: {results[0].detail}"
    ]


def test_sunspec_704_pv_falls_back_to_the_given_limit(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "pv", pv_704())

    async def body(device: Device) -> tuple[FallbackResult, FallbackResult, Any]:
        first = await device.configure_fallback(12.34)  # 24.68 % of 50 kW: 24.6 % (a step down, never up)
        unlimited = await device.configure_fallback(None)
        assert isinstance(device, SunSpecDevice)
        return first, unlimited, (await device.models([704]))[704]

    first, unlimited, control = with_device(make, body)
    assert first.configured
    assert first.confirmed_kw == pytest.approx(12.3)
    assert first.fallback_kw == pytest.approx(12.3)
    assert unlimited.fallback_kw is None
    assert unlimited.confirmed_kw == pytest.approx(50.0)
    assert [
        words for address, words in unit.writes if address == control.points["WMaxLimPctRvrt"].address
    ] == [
        [246, 1],  # with WMaxLimPctEnaRvrt 1, in the same request
        [1000, 1],
    ]
    assert control.values["WMaxLimPctEnaRvrt"] == 1


def test_sunspec_704_pv_fallback_is_never_above_the_installers_limit(servers: ServerThread) -> None:
    _, make = sunspec_device(servers, "pv", pv_704(limit_pct_raw=400, enabled=1))  # installer: 40 %, static

    async def body(device: Device) -> tuple[FallbackResult, FallbackResult, Any]:
        looser = await device.configure_fallback(30.0)  # 60 % asked
        tighter = await device.configure_fallback(5.0)  # 10 %
        await device.set_pv_limit_kw(25.0)  # must not put the installer's 40 % back as the reversion
        assert isinstance(device, SunSpecDevice)
        return looser, tighter, (await device.models([704]))[704]

    looser, tighter, control = with_device(make, body)
    assert looser.confirmed_kw == pytest.approx(20.0)
    assert "installer limit" in looser.detail
    assert tighter.confirmed_kw == pytest.approx(5.0)
    assert control.values["WMaxLimPctRvrt"] == pytest.approx(10.0)
    assert control.values["WMaxLimPct"] == pytest.approx(40.0)


def test_sunspec_123_pv_has_no_fallback_value_and_says_so_once(
    servers: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    unit, make = sunspec_pv(servers)
    caplog.set_level(logging.INFO, logger="hubctl.devices")

    async def body(device: Device) -> list[FallbackResult]:
        return [await device.configure_fallback(10.0), await device.configure_fallback(20.0)]

    results = with_device(make, body)
    assert not any(r.configured for r in results)
    assert "reverts to no limit" in results[0].detail
    assert unit.writes == []
    notes = [r for r in caplog.records if "no fallback" in r.getMessage()]
    assert len(notes) == 1
    assert notes[0].levelno == logging.INFO


def test_a_negative_fallback_limit_is_rejected_before_writing(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "pv", pv_704())

    async def body(device: Device) -> None:
        for kw in (-1.0, float("nan")):
            with pytest.raises(CommandRejectedError, match="fallback PV limit"):
                await device.configure_fallback(kw)

    with_device(make, body)
    assert unit.writes == []


# --- Register-map devices -----------------------------------------------------------------------------------


def huawei_pv(servers: ServerThread, derating_pct: float) -> tuple[SimUnit, RegisterMap, int]:
    register_map = load_map(DRIVERS / "huawei-sun2000.yaml")
    quick = register_map.transport.model_copy(
        update={"delay_after_connect_s": 0.0, "delay_between_requests_s": 0.0}
    )
    register_map = register_map.model_copy(update={"transport": quick})
    image = RegisterImage()
    for point in register_map.points:
        image.put(point, point.write_min if point.write_min is not None else 1.0)
    image.put(register_map.point("active_power_derating_pct"), derating_pct)
    unit = unit_for(image)
    return unit, register_map, servers.serve([unit])


def test_map_pv_limit_in_percent_of_the_rating(servers: ServerThread) -> None:
    unit, register_map, port = huawei_pv(servers, 100.0)

    async def body(device: Device) -> SetpointResult:
        return await device.set_pv_limit_kw(5.0)

    result = with_device(
        lambda pool: ModbusMapDevice(
            config("pv", "huawei-sun2000", port), register_map, pool.get("127.0.0.1", port), rated_kw=10.0
        ),
        body,
    )
    assert result.confirmed_kw == pytest.approx(5.0)
    assert result.refresh_every_s is None  # persistent register: written once
    assert writes_to(unit, 40125) == [[500]]  # 50.0 %, gain 10


def test_map_installer_limit_is_kept_and_restored(servers: ServerThread) -> None:
    unit, register_map, port = huawei_pv(servers, 70.0)

    async def body(device: Device) -> SetpointResult:
        with pytest.raises(CommandRejectedError, match=r"outside 0\.\.10 kW"):
            await device.set_pv_limit_kw(12.0)
        result = await device.set_pv_limit_kw(9.0)
        await device.release()
        return result

    result = with_device(
        lambda pool: ModbusMapDevice(
            config("pv", "huawei-sun2000", port), register_map, pool.get("127.0.0.1", port), rated_kw=10.0
        ),
        body,
    )
    assert result.applied_kw == pytest.approx(7.0)
    assert result.limited_by == "installer limit 70 %"
    assert writes_to(unit, 40125) == [[700], [700]]


def test_map_devices_have_no_fallback_value_to_write(servers: ServerThread) -> None:
    unit, register_map, port = huawei_pv(servers, 100.0)

    async def body(device: Device) -> FallbackResult:
        return await device.configure_fallback(5.0)

    result = with_device(
        lambda pool: ModbusMapDevice(
            config("pv", "huawei-sun2000", port), register_map, pool.get("127.0.0.1", port), rated_kw=10.0
        ),
        body,
    )
    assert not result.configured
    assert "huawei-sun2000" in result.detail
    assert unit.writes == []


def test_map_pv_limit_in_percent_needs_a_rating(servers: ServerThread) -> None:
    _, register_map, port = huawei_pv(servers, 100.0)

    async def body(device: Device) -> None:
        with pytest.raises(CommandRejectedError, match="rating"):
            await device.set_pv_limit_kw(5.0)

    with_device(
        lambda pool: ModbusMapDevice(
            config("pv", "huawei-sun2000", port), register_map, pool.get("127.0.0.1", port)
        ),
        body,
    )


# A battery whose setpoint register reverts by itself (as SMA's ~60 s, here shortened for the test).
REVERTING_BATTERY = {
    "device": {"vendor": "Test", "model": "Reverting battery", "document": {"title": "test", "version": "1"}},
    "default_unit_id": 1,
    "points": [
        {
            "name": "battery_power_kw",
            "unit": "kW",
            "function": "holding",
            "address": 10,
            "type": "int32",
            "scale": 0.001,
        },
        {"name": "soc_pct", "unit": "%", "function": "holding", "address": 12, "type": "uint16"},
        {
            "name": "battery_setpoint_kw",
            "unit": "kW",
            "function": "holding",
            "address": 20,
            "type": "int32",
            "scale": 0.001,
            "access": "rw",
            "write_min": -50.0,
            "write_max": 50.0,
            "revert_s": 0.8,
            "refresh_s": 0.3,
        },
    ],
    "roles": {
        "battery": {
            "power_kw": "battery_power_kw",
            "soc_pct": "soc_pct",
            "setpoint_kw": "battery_setpoint_kw",
        }
    },
}


def reverting_battery(servers: ServerThread, revert_s: float) -> tuple[SimUnit, RegisterMap, int]:
    register_map = parse_map(REVERTING_BATTERY)
    image = RegisterImage()
    image.put(register_map.point("battery_power_kw"), 1.5)
    image.put(register_map.point("soc_pct"), 55)
    image.put(register_map.point("battery_setpoint_kw"), 0.0)
    unit = unit_for(image)
    unit.revert_after(20, revert_s, [0, 0])
    return unit, register_map, servers.serve([unit])


def test_refresh_due_follows_the_maps_refresh_interval(servers: ServerThread) -> None:
    unit, register_map, port = reverting_battery(servers, 60.0)
    now = [100.0]

    async def body(device: Device) -> None:
        await device.set_battery_kw(2.0)
        assert not device.refresh_due(100.29)
        assert device.refresh_due(100.3)
        now[0] = 100.3
        assert len(await device.refresh()) == 1
        assert not device.refresh_due(100.59)
        assert device.refresh_due(100.6)
        await device.release()
        assert not device.refresh_due(1000.0)

    with_device(
        lambda pool: ModbusMapDevice(
            config("battery", "test", port), register_map, pool.get("127.0.0.1", port), clock=lambda: now[0]
        ),
        body,
    )
    assert writes_to(unit, 20) == [[0, 2000], [0, 2000]]


def test_setpoint_is_held_before_the_device_reverts_it(servers: ServerThread) -> None:
    _, register_map, port = reverting_battery(servers, 0.8)

    async def body(device: Device) -> tuple[list[float | None], float | None]:
        seen = []
        await device.set_battery_kw(3.5)
        refresher = asyncio.get_running_loop().create_task(
            hold_setpoints([device], tick_s=0.05), name="refresher"
        )
        try:
            for _ in range(4):  # 2 s: more than twice the revert time
                await asyncio.sleep(0.5)
                seen.append((await device.read()).points["battery_setpoint_kw"].value)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await asyncio.sleep(1.0)  # writes stopped: the device falls back
        return seen, (await device.read()).points["battery_setpoint_kw"].value

    seen, after = with_device(
        lambda pool: ModbusMapDevice(
            config("battery", "test", port), register_map, pool.get("127.0.0.1", port)
        ),
        body,
    )
    assert seen == [3.5, 3.5, 3.5, 3.5]
    assert after == 0.0


def test_a_write_the_device_does_not_keep_is_not_confirmed(servers: ServerThread) -> None:
    _, register_map, port = reverting_battery(servers, 0.0)  # reverts at once

    async def body(device: Device) -> None:
        with pytest.raises(CommandNotConfirmedError, match="reads back 0"):
            await device.set_battery_kw(3.5)

    with_device(
        lambda pool: ModbusMapDevice(
            config("battery", "test", port), register_map, pool.get("127.0.0.1", port)
        ),
        body,
    )


def test_a_meter_takes_no_setpoints(servers: ServerThread) -> None:
    register_map = load_map(DRIVERS / "eastron-sdm630.yaml")
    port = servers.serve([unit_for(RegisterImage())])

    async def body(device: Device) -> None:
        with pytest.raises(CommandRejectedError, match="grid_meter takes no PV limit"):
            await device.set_pv_limit_kw(1.0)
        with pytest.raises(CommandRejectedError, match="grid_meter takes no battery setpoint"):
            await device.set_battery_kw(1.0)

    with_device(
        lambda pool: ModbusMapDevice(
            config("grid_meter", "eastron-sdm630", port), register_map, pool.get("127.0.0.1", port)
        ),
        body,
    )


def test_build_device_refuses_what_it_cannot_drive() -> None:
    async def main() -> None:
        async with ConnectionPool() as pool:
            with pytest.raises(DeviceConfigError, match="no map 'acme-9000'"):
                build_device(config("grid_meter", "acme-9000", 502), pool=pool)
            with pytest.raises(DeviceConfigError, match="offers no pv role"):
                build_device(config("pv", "eastron-sdm630", 502), pool=pool)
            with pytest.raises(DeviceConfigError, match="needs a broker"):
                build_device(
                    DeviceConfig.model_validate(
                        {
                            "id": "p1",
                            "company": "bakery",
                            "role": "grid_meter",
                            "driver": "mqtt",
                            "mqtt": {"points": {"power_kw": {"topic": "p1/power"}}},
                        }
                    ),
                    pool=pool,
                )
            device = build_device(config("grid_meter", "eastron-sdm630", 502), pool=pool)
            assert isinstance(device, ModbusMapDevice)
            assert device.unit_id == 1
            assert device.timeout_s == 2  # the site config's, given explicitly

    run(main)


def test_read_all_reports_each_failure_as_its_entry(servers: ServerThread) -> None:
    register_map = load_map(DRIVERS / "eastron-sdm630.yaml")
    image = RegisterImage()
    for point in register_map.points:
        image.put(point, 2.0)
    port = servers.serve([unit_for(image)])
    dead = servers.serve([unit_for(RegisterImage())])
    servers.stop(dead)

    async def main() -> dict[str, Reading | DeviceError]:
        async with ConnectionPool() as pool:
            devices = [
                build_device(config("grid_meter", "eastron-sdm630", port, "good"), pool=pool),
                build_device(config("grid_meter", "eastron-sdm630", dead, "dead"), pool=pool),
            ]
            return await read_all(devices)

    results = run(main)
    good = results["good"]
    assert isinstance(good, Reading)
    assert good.power_kw == pytest.approx(2.0)
    assert isinstance(results["dead"], DeviceUnavailableError)


# --- Commissioning CLI --------------------------------------------------------------------------------------


def site_config(tmp_path: Path, devices: list[dict[str, Any]]) -> Path:
    data = {
        "park": {"import_limit_kw": 900, "export_limit_kw": 500},
        "companies": [{"id": "bakery", "pv": {"peak_kw": 50}}],
        "devices": devices,
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_hubctl_read_prints_values_and_a_clear_error_per_device(
    servers: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_map = load_map(DRIVERS / "eastron-sdm630.yaml")
    image = RegisterImage()
    for point in register_map.points:
        image.put(point, 230.0 if point.unit == "V" else -1500.0 if point.name == "active_power_kw" else 1.0)
    meter_port = servers.serve([unit_for(image)])
    pv_port = servers.serve([unit_for(image_of(inverter_models()))])
    dead_port = servers.serve([unit_for(RegisterImage())])
    servers.stop(dead_port)
    modbus = {"host": "127.0.0.1", "timeout_s": 1}
    path = site_config(
        tmp_path,
        [
            {
                "id": "meter",
                "company": "bakery",
                "role": "grid_meter",
                "driver": "eastron-sdm630",
                "modbus": modbus | {"port": meter_port},
            },
            {
                "id": "inverter",
                "company": "bakery",
                "role": "pv",
                "driver": "sunspec",
                "modbus": modbus | {"port": pv_port},
            },
            {
                "id": "gone",
                "company": "bakery",
                "role": "grid_meter",
                "driver": "eastron-sdm630",
                "modbus": modbus | {"port": dead_port},
            },
        ],
    )
    assert cli_main(["read", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "meter (grid_meter, eastron-sdm630 @ 127.0.0.1:" in out
    assert "power_kw" in out
    assert "-1500 kW" in out
    assert "voltage_l1_v" in out
    assert "230 V" in out
    assert "1.234 kW" in out  # the SunSpec inverter's 1234.5 W
    assert "103.W" in out
    # what the inverter does once no controller writes: 123 has no reversion limit
    fallback_lines = [line.split(None, 1) for line in out.splitlines() if line.startswith("  fallback ")]
    assert fallback_lines == [
        [
            "fallback",
            (
                "none configurable (123 has no reversion limit): the limit lapses"
                " 60 s after hubctl's last write, then no limit (full export)"
            ),
        ]
    ]
    assert "gone (grid_meter" in out
    assert "FAILED: unavailable" in out
    assert "cannot connect" in out
    assert "1 of 3 device(s) failed" in err

    assert (
        cli_main(["read", "--config", str(path), "--device", "meter", "--device", "inverter", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)["devices"]
    assert data["meter"]["ok"] is True
    assert data["meter"]["values"]["power_kw"] == {"value": pytest.approx(-1500.0), "unit": "kW"}
    assert data["inverter"]["values"]["rated_kw"]["value"] == pytest.approx(50.0)
    assert data["inverter"]["fallback"] == (
        "none configurable (123 has no reversion limit): the limit lapses 60 s after hubctl's"
        " last write, then no limit (full export)"
    )
    assert data["meter"]["fallback"] is None  # a meter takes no setpoint

    assert cli_main(["read", "--config", str(path), "--device", "gone", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["devices"]["gone"]["error"]
    assert error["kind"] == "unavailable"
    assert error["retry"] is True

    assert cli_main(["read", "--config", str(path), "--device", "nope"]) == 2


def test_hubctl_scan_lists_the_models(servers: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    port = servers.serve([unit_for(image_of(inverter_models()), 3)])
    assert cli_main(["scan", f"127.0.0.1:{port}", "--unit", "3"]) == 0
    out = capsys.readouterr().out
    assert "SunSpec, 5 model(s)" in out
    assert "manufacturer Acme Solar" in out
    for line in (
        "40002      1      66  common",
        "40070    103      50  inverter_three_phase",
        "123      24  controls",
    ):
        assert line in out
    assert cli_main(["scan", f"127.0.0.1:{port}", "--unit", "3", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert [m["id"] for m in models] == [1, 103, 120, 121, 123]


def test_hubctl_scan_of_a_device_without_sunspec(
    servers: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    image = RegisterImage()
    image.set_words(HOLDING, 40000, [1, 2, 3, 4])
    port = servers.serve([unit_for(image)])
    assert cli_main(["scan", f"127.0.0.1:{port}"]) == 1
    assert "identity: no SunSpec marker" in capsys.readouterr().err


def test_a_704_pv_limit_is_enable_and_limit_in_one_request_then_the_timer_once(servers: ServerThread) -> None:
    unit, make = sunspec_device(servers, "pv", pv_704())

    async def body(device: Device) -> tuple[list[list[int]], list[list[int]]]:
        await device.set_pv_limit_kw(25.0)  # 50 % of 50 kW, WMaxLimPct_SF -1
        first = [words for _, words in unit.writes]
        unit.writes.clear()
        await device.read()
        await device.set_pv_limit_kw(20.0)
        return first, [words for _, words in unit.writes]

    first, second = with_device(make, body)
    assert first == [[1, 500], [0, 60]]  # WMaxLimPctEna 1 + WMaxLimPct; WMaxLimPctRvrtTms 60 s (uint32)
    assert second == [[1, 400]]  # the device holds the timer already
