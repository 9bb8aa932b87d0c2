# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""SunSpec discovery and decoding against register images built independently with pysunspec2.

The images are made by pysunspec2's own Model classes (`get_mb()`), not by
hubctl, and served by pymodbus; hubctl must discover the chain and decode it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import pytest
import sunspec2.device as sunspec_device
from hypothesis import given, settings
from hypothesis import strategies as st
from test_modbus_harness import (  # pytest puts tests/ on sys.path
    RegisterImage,
    ServerThread,
    leak_check,  # noqa: F401 - autouse fixture
    run,
    server_thread,  # noqa: F401 - fixture
    unit_for,
)

from hubctl.codec import sunspec
from hubctl.codec.registers import Function
from hubctl.config.devices import Device as DeviceConfig
from hubctl.devices.sunspec import SunSpecDevice
from hubctl.errors import CommandRejectedError, DeviceIdentityError, DeviceProtocolError
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from hubctl.devices.base import Reading


def model(model_id: int, **values: Any) -> Any:
    """A pysunspec2 model with `values` (raw register values, before scale factors)."""
    built = sunspec_device.Model(model_id=model_id, data=values)
    assert not built.error_info, built.error_info
    return built


def image_of(models: list[Any], *, base: int = 40000, end_marker: bool = True) -> RegisterImage:
    data = b"SunS" + b"".join(m.get_mb() for m in models)
    if end_marker:
        data += struct.pack(">HH", 0xFFFF, 0)
    image = RegisterImage()
    image.set_words(
        Function.HOLDING, base, [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    )
    return image


def common() -> Any:
    return model(1, Mn="Acme Solar", Md="PV-50", SN="A-0001", Vr="2.1.0")


def inverter_models(*, limit_pct_raw: int = 1000, enabled: int = 0, revert_s: int = 0) -> list[Any]:
    return [
        common(),
        model(103, W=12345, W_SF=-1, A=456, A_SF=-1, WH=0, WH_SF=0, Hz=5000, Hz_SF=-2, St=4),
        model(120, DERTyp=4, WRtg=500, WRtg_SF=2),
        model(121, WMax=500, WMax_SF=2),
        model(
            123,
            WMaxLimPct=limit_pct_raw,
            WMaxLimPct_SF=-1,
            WMaxLim_Ena=enabled,
            WMaxLimPct_RvrtTms=revert_s,
            WMaxLimPct_WinTms=0,
            WMaxLimPct_RmpTms=0,
        ),
    ]


def meter_models() -> list[Any]:
    return [
        common(),
        model(203, W=-2500, W_SF=0, WphA=-800, TotWhImp=123456, TotWhExp=0, TotWh_SF=0, Hz=50, Hz_SF=0),
    ]


def storage_models() -> list[Any]:
    return [
        common(),
        model(802, SoC=655, SoC_SF=-1, W=1500, W_SF=0, WChaRteMax=50, WDisChaRteMax=60, WChaDisChaMax_SF=2),
        model(713, SoC=650, Pct_SF=-1, WHRtg=200, WH_SF=2),
        model(714, NPrt=2, DCW=1500, DCW_SF=0, Prt=[{"PrtTyp": 0, "DCW": 700}, {"PrtTyp": 0, "DCW": 800}]),
        model(704, WSet=0, WSet_SF=0, WSetEna=0, WSetMod=1, WSetRvrtTms=0),
    ]


def config(role: str, port: int) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": f"sunspec-{role}".replace("_", "-"),
            "company": None if role == "park_meter" else "bakery",
            "role": role,
            "driver": "sunspec",
            "modbus": {"host": "127.0.0.1", "port": port, "timeout_s": 2},
        }
    )


def read_device(role: str, port: int) -> tuple[Reading, list[sunspec.ModelHeader]]:
    async def main() -> tuple[Reading, list[sunspec.ModelHeader]]:
        async with ConnectionPool() as pool:
            device = SunSpecDevice(config(role, port), pool.get("127.0.0.1", port))
            reading = await device.read()
            return reading, await device.discover()

    return run(main)


# --- Over loopback ------------------------------------------------------------------------------------------


def test_inverter_is_discovered_and_decoded(servers: ServerThread) -> None:
    models = inverter_models()
    port = servers.serve([unit_for(image_of(models))])
    reading, headers = read_device("pv", port)
    assert [h.model_id for h in headers] == [1, 103, 120, 121, 123]
    assert [h.length for h in headers] == [m.len - 2 for m in models]  # pysunspec2's own lengths
    assert headers[0].address == 40002
    assert [h.name for h in headers][:2] == ["common", "inverter_three_phase"]
    assert reading.values == {"power_kw": pytest.approx(1.2345), "limit_pct": 100.0, "rated_kw": 50.0}
    assert reading.points["103.W"].value == pytest.approx(1234.5)
    assert reading.points["103.W"].unit == "W"
    assert reading.points["103.A"].value == pytest.approx(45.6)
    assert reading.points["103.Hz"].value == pytest.approx(50.0)
    assert reading.points["103.WH"].value is None  # an accumulator reading 0 is "not implemented"
    assert reading.points["103.VA"].value is None  # never set: pysunspec2 wrote the unimplemented pattern
    assert reading.points["123.WMaxLimPct"].value == pytest.approx(100.0)


def test_meter_gives_grid_power_with_hubctl_sign(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_of(meter_models()))])
    reading, _ = read_device("grid_meter", port)
    assert reading.power_kw == pytest.approx(-2.5)  # SunSpec meter: - is export, as hubctl
    assert reading.values["energy_import_kwh"] == pytest.approx(123.456)
    assert reading.values["energy_export_kwh"] is None


def test_storage_gives_soc_power_and_reads_repeating_groups(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_of(storage_models()))])
    reading, headers = read_device("battery", port)
    assert [h.model_id for h in headers] == [1, 802, 713, 714, 704]
    assert reading.soc_pct == pytest.approx(65.5)  # 802 preferred over 713
    assert reading.power_kw == pytest.approx(1.5)  # + discharge
    assert reading.values["setpoint_kw"] is None  # WSetEna off
    assert reading.points["714.DCW"].value == pytest.approx(1500.0)


@pytest.mark.parametrize("base", [0, 50000])
def test_fallback_base_addresses(servers: ServerThread, base: int) -> None:
    port = servers.serve([unit_for(image_of(meter_models(), base=base))])
    reading, headers = read_device("grid_meter", port)
    assert headers[0].address == base + 2
    assert reading.power_kw == pytest.approx(-2.5)


def test_no_marker_is_an_identity_error(servers: ServerThread) -> None:
    image = RegisterImage()
    image.set_words(Function.HOLDING, 40000, [0x1234, 0x5678, 1, 66])
    port = servers.serve([unit_for(image)])
    with pytest.raises(DeviceIdentityError, match="SunS"):
        read_device("pv", port)


def test_missing_role_model_is_an_identity_error(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_of(meter_models()))])
    with pytest.raises(DeviceIdentityError, match="inverter"):
        read_device("pv", port)


def test_chain_without_end_marker_is_accepted(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_of(meter_models(), end_marker=False))])
    reading, headers = read_device("grid_meter", port)
    assert [h.model_id for h in headers] == [1, 203]
    assert reading.power_kw == pytest.approx(-2.5)


def test_unimplemented_scale_factor_gives_none(servers: ServerThread) -> None:
    models = [common(), model(203, W=1000, WphA=1000)]  # W_SF left unimplemented (0x8000)
    port = servers.serve([unit_for(image_of(models))])
    reading, _ = read_device("grid_meter", port)
    assert reading.power_kw is None
    assert reading.points["203.WphA"].value is None


# --- Pure parts ---------------------------------------------------------------------------------------------


def test_plan_spans_joins_adjacent_models_and_splits_long_ones() -> None:
    headers = [
        sunspec.ModelHeader(1, 40002, 66),
        sunspec.ModelHeader(103, 40070, 50),
        sunspec.ModelHeader(802, 40200, 200),
    ]
    assert sunspec.plan_spans(headers) == [(40002, 120), (40200, 125), (40325, 77)]


def test_decode_rejects_words_of_another_model() -> None:
    words = [int.from_bytes(common().get_mb()[i : i + 2], "big") for i in range(0, 136, 2)]
    with pytest.raises(DeviceProtocolError, match="reads as id 1"):
        sunspec.decode_model(sunspec.ModelHeader(103, 40002, 66), words)


def test_encode_value_scales_and_refuses_what_does_not_fit() -> None:
    header = sunspec.ModelHeader(123, 40002, 24)
    data = model(123, WMaxLimPct=1000, WMaxLimPct_SF=-1).get_mb()
    decoded = sunspec.decode_model(
        header, [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    )
    point = decoded.points["WMaxLimPct"]
    assert point.address == 40002 + 5
    assert sunspec.encode_value(point, 55.5, decoded.exponent(point)) == [555]
    with pytest.raises(CommandRejectedError, match="does not fit"):
        sunspec.encode_value(point, -1.0, -1)
    with pytest.raises(CommandRejectedError, match="not implemented"):
        sunspec.encode_value(point, 6553.5, -1)  # 0xFFFF is uint16's "not implemented"
    with pytest.raises(CommandRejectedError, match="scale factor"):
        sunspec.encode_value(point, 50.0, None)


def test_identity_from_the_common_model() -> None:
    data = common().get_mb()
    decoded = sunspec.decode_model(
        sunspec.ModelHeader(1, 40002, 66),
        [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)],
    )
    assert sunspec.identity({1: decoded}) == {
        "manufacturer": "Acme Solar",
        "model": "PV-50",
        "version": "2.1.0",
        "serial": "A-0001",
    }


def test_decoding_the_same_model_again_gives_what_a_fresh_decode_gives() -> None:
    """The decoder keeps one layout per (id, address, length): no value of a read may stick."""

    def words_of(m: Any) -> list[int]:
        data = m.get_mb()
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    header = sunspec.ModelHeader(203, 40070, 105)
    reads = [
        model(203, W=-2500, W_SF=0, WphA=-800, TotWhImp=123456, TotWhExp=0, TotWh_SF=0, Hz=50, Hz_SF=0),
        model(203, W=1000, WphA=1000),  # scale factors unimplemented: None, not the last read's values
        model(203, W=42, W_SF=-1, TotWhImp=7, TotWh_SF=1, Hz=4999, Hz_SF=-2),
    ]
    sunspec._LAYOUTS.clear()  # the cache under test
    decoded = [sunspec.decode_model(header, words_of(m)) for m in reads]
    for m, again in zip(reads, decoded, strict=True):
        sunspec._LAYOUTS.clear()
        fresh = sunspec.decode_model(header, words_of(m))
        assert (again.values, again.raw, again.texts, again.points) == (
            fresh.values,
            fresh.raw,
            fresh.texts,
            fresh.points,
        )
    assert decoded[0].values["W"] == -2500
    assert decoded[1].values["W"] is None
    assert decoded[2].values["W"] == pytest.approx(4.2)


_MODEL_HEADERS = [
    sunspec.ModelHeader(1, 40002, 66),
    sunspec.ModelHeader(103, 40070, 50),
    sunspec.ModelHeader(120, 40122, 26),
    sunspec.ModelHeader(121, 40150, 30),
    sunspec.ModelHeader(123, 40182, 24),
    sunspec.ModelHeader(124, 40208, 24),
    sunspec.ModelHeader(203, 40234, 105),
    sunspec.ModelHeader(704, 40341, 65),  # with groups (PF settings): top-level points only
    sunspec.ModelHeader(802, 40408, 62),
]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), header=st.sampled_from(_MODEL_HEADERS))
def test_the_layout_fast_path_decodes_as_pysunspec2_does(
    data: st.DataObject, header: sunspec.ModelHeader
) -> None:
    """Property: whatever the registers hold (not-implemented patterns included), a decode through
    the kept layout equals a decode by a fresh pysunspec2 Model."""
    special = st.sampled_from([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0xFFFE])
    body = data.draw(
        st.lists(st.one_of(special, st.integers(0, 0xFFFF)), min_size=header.length, max_size=header.length)
    )
    words = [header.model_id, header.length, *body]
    sunspec._LAYOUTS.clear()
    sunspec.decode_model(header, [header.model_id, header.length, *([0] * header.length)])  # keeps the layout
    assert (header.model_id, header.address, header.length) in sunspec._LAYOUTS
    try:
        fast = sunspec.decode_model(header, words)
    except DeviceProtocolError as exc:
        fast_error: str | None = str(exc)
    else:
        fast_error = None
    sunspec._LAYOUTS.clear()
    try:
        fresh = sunspec.decode_model(header, words)
    except DeviceProtocolError:
        assert fast_error is not None
        return
    assert fast_error is None, fast_error
    assert fast.raw == fresh.raw
    assert fast.texts == fresh.texts
    assert fast.points == fresh.points
    assert fast.values == pytest.approx(fresh.values, nan_ok=True)
