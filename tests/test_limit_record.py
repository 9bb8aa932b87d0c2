"""hubctl's own limit is never taken for the installer's (#13 item 4), device by device over loopback.

A "restart" is a new device object against the same simulated registers, with the same record
(`hubctl.service.limit_record.LimitFile` in a temporary state directory), as `hubctl run` builds
its devices anew after a SIGTERM; `tests/test_restart_release.py` does the same with two real
`hubctl run`s against `hubctl simulate`. Also: `release()` lifts a limit hubctl does not hold (a
previous run's, #13 item 5), and the record's file survives damage.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from test_devices import config, huawei_pv, pv_704, register_history, sunspec_device, sunspec_pv, with_device
from test_modbus_harness import (  # pytest puts tests/ on sys.path
    leak_check,  # noqa: F401 - autouse fixture
    server_thread,  # noqa: F401 - fixture "servers"
)
from test_sunspec import inverter_models, model

from hubctl.codec.registers import Function
from hubctl.devices.base import Device, RecordedLimit
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.devices.sunspec import SunSpecDevice
from hubctl.service.limit_record import LimitFile

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from test_modbus_harness import ServerThread

    from hubctl.codec.regmap import RegisterMap
    from hubctl.transport.modbus import ConnectionPool

WMAXLIMPCT = 40002 + 68 + 52 + 28 + 32 + 5  # as in test_devices.py: 123's WMaxLimPct


def recorded(
    make: Callable[[ConnectionPool], Device], record: LimitFile | None
) -> Callable[[ConnectionPool], Device]:
    def build(pool: ConnectionPool) -> Device:
        device = make(pool)
        device.limit_record = record
        return device

    return build


# --- SunSpec 123 under an installer's static limit: hubctl's limits are static too --------------------------


def test_a_123_limit_hubctl_wrote_under_the_installers_is_not_the_next_runs_ceiling(
    servers: ServerThread, tmp_path: Path
) -> None:
    unit, make = sunspec_pv(servers, limit_pct_raw=400, enabled=1, revert_s=0)  # installer: 40 %, static
    record = LimitFile(tmp_path / "device-limits.json")

    async def first(device: Device) -> None:
        result = await device.set_pv_limit_kw(5.0)  # the fail-safe at a stop: 10 %, static (no revert)
        assert result.refresh_every_s is None

    with_device(recorded(make, record), first)
    assert register_history(unit, WMAXLIMPCT)[-1] == 100  # 10.0 % left on the inverter

    async def second(device: Device) -> tuple[float, str | None]:
        result = await device.set_pv_limit_kw(30.0)  # 60 % asked
        return result.applied_kw, result.limited_by

    # the next run: the 10 % it finds is hubctl's own; the installer's 40 % is still the ceiling
    again = LimitFile(tmp_path / "device-limits.json")  # read from disk, as a new process does
    assert with_device(recorded(make, again), second) == (pytest.approx(20.0), "installer limit 40 %")
    # without a record (no state directory) the 10 % would be taken for the installer's, as before
    unit.image.set_words(Function.HOLDING, WMAXLIMPCT, [100])
    assert with_device(make, second) == (pytest.approx(5.0), "installer limit 10 %")


def test_a_limit_the_installer_changed_since_is_the_installers(
    servers: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unit, make = sunspec_pv(servers, limit_pct_raw=400, enabled=1, revert_s=0)
    record = LimitFile(tmp_path / "device-limits.json")

    async def limit(device: Device) -> tuple[float, str | None]:
        result = await device.set_pv_limit_kw(15.0)  # 30 %
        return result.applied_kw, result.limited_by

    assert with_device(recorded(make, record), limit) == (pytest.approx(15.0), None)
    unit.image.set_words(Function.HOLDING, WMAXLIMPCT, [250])  # the installer: 25 % now
    caplog.set_level(logging.INFO, "hubctl.devices")
    assert with_device(recorded(make, record), limit) == (pytest.approx(12.5), "installer limit 25 %")
    assert "installer limit 25 % (model 123) found" in caplog.text
    assert record.get("dev") == RecordedLimit("123.WMaxLimPct", "%", 25.0, (25.0,))


# --- SunSpec 704 under an installer's static limit: hubctl's limit lapses into the reversion limit ----------


def test_a_704_whose_limit_lapsed_keeps_the_installers_ceiling_across_a_restart(
    servers: ServerThread, tmp_path: Path
) -> None:
    unit, make = sunspec_device(servers, "pv", pv_704(limit_pct_raw=400, enabled=1))  # installer: 40 %
    record = LimitFile(tmp_path / "device-limits.json")
    enable_at: list[int] = []

    async def first(device: Device) -> None:
        await device.set_pv_limit_kw(10.0)  # 20 %, with a revert time
        assert isinstance(device, SunSpecDevice)
        enable_at.append((await device.models([704]))[704].points["WMaxLimPctEna"].address)

    with_device(recorded(make, record), first)
    unit.image.set_words(Function.HOLDING, enable_at[0], [0])  # hubctl stopped: its limit lapsed

    async def second(device: Device) -> tuple[float, str | None]:
        result = await device.set_pv_limit_kw(45.0)  # 90 % asked
        return result.applied_kw, result.limited_by

    # before, the lapsed limit (enable 0) read as "no installer limit": 45 kW, over the installer's 40 %
    assert with_device(recorded(make, record), second) == (pytest.approx(20.0), "installer limit 40 %")


# --- Huawei's persistent derating ---------------------------------------------------------------------------


def huawei(
    register_map: RegisterMap, port: int, record: LimitFile | None
) -> Callable[[ConnectionPool], Device]:
    def build(pool: ConnectionPool) -> Device:
        device = ModbusMapDevice(
            config("pv", "huawei-sun2000", port), register_map, pool.get("127.0.0.1", port), rated_kw=10.0
        )
        device.limit_record = record
        return device

    return build


def test_huaweis_derating_hubctl_left_is_restored_to_the_installers(
    servers: ServerThread, tmp_path: Path
) -> None:
    unit, register_map, port = huawei_pv(servers, 80.0)  # the installer's derating: 80 %
    record = LimitFile(tmp_path / "device-limits.json")

    async def stop(device: Device) -> None:
        await device.set_pv_limit_kw(2.5)  # the fail-safe at a stop: 25 %, kept by the inverter

    async def restart(device: Device) -> tuple[float, str | None]:
        await device.release()  # the first decision: no limit
        result = await device.set_pv_limit_kw(9.0)  # 90 % asked
        return result.applied_kw, result.limited_by

    with_device(huawei(register_map, port, record), stop)
    assert [w for at, w in unit.writes if at == 40125] == [[250]]
    # the next run restores the installer's 80 % (not the 25 % it finds) and never exceeds it
    assert with_device(huawei(register_map, port, record), restart) == (
        pytest.approx(8.0),
        "installer limit 80 %",
    )
    assert [w for at, w in unit.writes if at == 40125] == [[250], [800], [800]]


# --- release() lifts a limit hubctl does not hold (#13 item 5) ----------------------------------------------


def test_release_lifts_a_704_limit_and_fallback_a_previous_run_left(servers: ServerThread) -> None:
    left = model(  # a previous run's 30 % with its revert time, the reversion limit enabled
        704,
        WMaxLimPctEna=1,
        WMaxLimPct=300,
        WMaxLimPctRvrt=200,
        WMaxLimPctEnaRvrt=1,
        WMaxLimPctRvrtTms=60,
        WMaxLimPct_SF=-1,
    )
    unit, make = sunspec_device(servers, "pv", [*inverter_models()[:-1], left])

    async def body(device: Device) -> Any:
        await device.release()  # hubctl holds nothing yet: before #13 item 5 this wrote nothing
        assert isinstance(device, SunSpecDevice)
        return (await device.models([704]))[704].values["WMaxLimPctEna"]

    assert with_device(make, body) == 0  # the limit off (on a real 704 that also ends its fallback)
    assert len(unit.writes) == 1


# --- the file itself ----------------------------------------------------------------------------------------


def test_the_record_survives_a_restart_and_damage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "device-limits.json"
    record = LimitFile(path)
    record.put("beta-pv", RecordedLimit("active_power_derating_pct", "%", None, (25.0, 30.0)))
    record.put("alpha-pv", RecordedLimit("123.WMaxLimPct", "%", 40.0, (10.0,)))
    assert LimitFile(path).entries == record.entries
    document = json.loads(path.read_text(encoding="utf-8"))
    document["devices"]["gamma-pv"] = {"point": "x", "unit": "%", "installer": "high", "written": []}
    path.write_text(json.dumps(document), encoding="utf-8")
    caplog.set_level(logging.WARNING, "hubctl.service")
    assert set(LimitFile(path).entries) == {"alpha-pv", "beta-pv"}  # the bad entry skipped, named
    assert "gamma-pv: its recorded limit is not readable; skipped" in caplog.text
    path.write_bytes(b"\x00\xff{garbage")
    assert LimitFile(path).entries == {}
    assert "is damaged" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("device-limits.json.damaged-")]
    assert not path.exists()  # moved aside; the next put starts a new one
