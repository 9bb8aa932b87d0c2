# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""The Modbus transport against real pymodbus servers: typed faults, recovery, sharing, pacing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from test_modbus_harness import (  # pytest puts tests/ on sys.path
    RegisterImage,
    ServerThread,
    SimUnit,
    leak_check,  # noqa: F401 - autouse fixture
    run,
    server_thread,  # noqa: F401 - fixture
    unit_for,
)

from hubctl.codec.registers import Function
from hubctl.codec.regmap import Transport
from hubctl.errors import DeviceBusyError, DeviceError, DeviceProtocolError, DeviceUnavailableError
from hubctl.transport.backoff import backoff_s
from hubctl.transport.modbus import ConnectionPool, ModbusConnection, exception_error

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

HOLDING = Function.HOLDING


def image_with(address: int = 0, words: list[int] | None = None) -> RegisterImage:
    image = RegisterImage()
    image.set_words(HOLDING, address, words if words is not None else [11, 22, 33, 44])
    return image


def fast_connection(port: int, **options: float) -> ModbusConnection:
    defaults: dict[str, float] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 1.0}
    return ModbusConnection("127.0.0.1", port, **(defaults | options))  # type: ignore[arg-type]


# --- Pure parts ---------------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=1))
def test_backoff_is_capped_exponential_with_jitter(failures: int, jitter: float) -> None:
    cap = min(30.0, 0.5 * 2.0 ** (failures - 1))
    delay = backoff_s(failures, jitter, initial_s=0.5, max_s=30.0)
    assert cap / 2 - 1e-12 <= delay <= cap + 1e-12


def test_backoff_doubles_then_stops_growing() -> None:
    caps = [backoff_s(n, 1.0, initial_s=1.0, max_s=10.0) for n in range(6)]
    assert caps == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]


@pytest.mark.parametrize(
    ("code", "error", "retry"),
    [
        (1, DeviceProtocolError, False),
        (2, DeviceProtocolError, False),
        (3, DeviceProtocolError, False),
        (4, DeviceUnavailableError, True),
        (5, DeviceBusyError, True),
        (6, DeviceBusyError, True),
        (10, DeviceUnavailableError, True),
        (11, DeviceUnavailableError, True),
    ],
)
def test_exception_codes_map_to_typed_errors(code: int, error: type[DeviceError], retry: bool) -> None:
    mapped = exception_error(code, "host:502 unit 1")
    assert type(mapped) is error
    assert mapped.retry is retry
    assert f"exception {code}" in str(mapped)


# --- Over loopback ------------------------------------------------------------------------------------------


def test_refused_connection_is_unavailable_and_recovers(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_with())])
    servers.stop(port)

    async def main() -> list[int]:
        connection = fast_connection(port)
        try:
            with pytest.raises(DeviceUnavailableError, match="cannot connect"):
                await connection.read(HOLDING, 0, 2, 1, timeout_s=1)
            # Backing off: fails at once without touching the network.
            started = time.monotonic()
            with pytest.raises(DeviceUnavailableError, match="next attempt"):
                await connection.read(HOLDING, 0, 2, 1, timeout_s=1)
            assert time.monotonic() - started < 0.05
            servers.restart(port)
            deadline = time.monotonic() + 3
            while True:
                try:
                    return await connection.read(HOLDING, 0, 2, 1, timeout_s=1)
                except DeviceUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await connection.close()

    assert run(main) == [11, 22]


def test_busy_and_illegal_address_are_typed_and_reading_recovers(servers: ServerThread) -> None:
    unit = unit_for(image_with())
    port = servers.serve([unit])

    async def main() -> None:
        connection = fast_connection(port)
        try:
            unit.fault = "busy"
            with pytest.raises(DeviceBusyError, match="exception 6"):
                await connection.read(HOLDING, 0, 4, 1, timeout_s=1)
            unit.fault = "illegal"
            with pytest.raises(DeviceProtocolError, match="exception 2") as caught:
                await connection.read(HOLDING, 0, 4, 1, timeout_s=1)
            assert caught.value.retry is False
            unit.fault = None
            assert await connection.read(HOLDING, 0, 4, 1, timeout_s=1) == [11, 22, 33, 44]
            # Outside the served registers: the server's own illegal-address answer.
            with pytest.raises(DeviceProtocolError, match="exception 2"):
                await connection.read(HOLDING, 0, 20, 1, timeout_s=1)
            assert connection.connected  # exception answers do not cost the connection
        finally:
            await connection.close()

    run(main)


def test_silent_unit_does_not_cut_off_the_others(servers: ServerThread) -> None:
    silent = unit_for(image_with(words=[1, 1]), unit_id=2)
    talking = unit_for(image_with(words=[7, 7]), unit_id=3)
    port = servers.serve([silent, talking])

    async def main() -> None:
        connection = fast_connection(port, max_silent=3)
        try:
            silent.fault = "silent"
            for _ in range(5):  # more than pymodbus' retries + 3 and more than max_silent
                with pytest.raises(DeviceUnavailableError, match="no answer within"):
                    await connection.read(HOLDING, 0, 2, 2, timeout_s=0.15)
                assert await connection.read(HOLDING, 0, 2, 3, timeout_s=1) == [7, 7]
            assert connection.connected
            silent.fault = None
            assert await connection.read(HOLDING, 0, 2, 2, timeout_s=1) == [1, 1]
        finally:
            await connection.close()

    run(main)


def test_a_silent_connection_is_dropped_and_reopened(servers: ServerThread) -> None:
    unit = unit_for(image_with(words=[5, 6]))
    port = servers.serve([unit])

    async def main() -> None:
        connection = fast_connection(port, max_silent=2)
        try:
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=1) == [5, 6]
            unit.fault = "silent"
            for _ in range(2):
                with pytest.raises(DeviceUnavailableError):
                    await connection.read(HOLDING, 0, 2, 1, timeout_s=0.1)
            assert not connection.connected  # dropped after max_silent timeouts in a row
            unit.fault = None
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=1) == [5, 6]
        finally:
            await connection.close()

    run(main)


def test_server_that_drops_the_connection_fails_fast_and_recovers(servers: ServerThread) -> None:
    unit = unit_for(image_with(words=[3, 4]))
    port = servers.serve([unit])

    async def main() -> None:
        connection = fast_connection(port)
        try:
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=2) == [3, 4]
            servers.stop(port)
            started = time.monotonic()
            with pytest.raises(DeviceUnavailableError):
                await connection.read(HOLDING, 0, 2, 1, timeout_s=2)
            assert time.monotonic() - started < 1.0  # not the 2 s timeout
            servers.restart(port)
            await asyncio.sleep(0.25)  # past the backoff
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=2) == [3, 4]
        finally:
            await connection.close()

    run(main)


def test_concurrent_units_share_one_connection(servers: ServerThread) -> None:
    units = [unit_for(image_with(words=[unit_id] * 10), unit_id=unit_id) for unit_id in range(1, 6)]
    port = servers.serve(units)

    async def main() -> None:
        async with ConnectionPool() as pool:
            connection = pool.get("127.0.0.1", port)
            assert pool.get("127.0.0.1", port) is connection

            async def poll(unit_id: int) -> None:
                for _ in range(10):
                    assert await connection.read(HOLDING, 0, 10, unit_id, timeout_s=2) == [unit_id] * 10

            await asyncio.gather(*(poll(u.unit_id) for u in units))
            assert connection.requests == 50
            assert len(ModbusConnection.open_connections()) == 1

    run(main)


def test_transport_quirks_pace_the_requests(servers: ServerThread) -> None:
    port = servers.serve([unit_for(image_with())])

    async def main() -> tuple[float, float]:
        async with ConnectionPool() as pool:
            quirks = Transport(delay_after_connect_s=0.3, delay_between_requests_s=0.1)
            connection = pool.get("127.0.0.1", port, quirks)
            started = time.monotonic()
            await connection.read(HOLDING, 0, 1, 1, timeout_s=2)
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(3):
                await connection.read(HOLDING, 0, 1, 1, timeout_s=2)
            return first, time.monotonic() - started

    first, three = run(main)
    assert first >= 0.3
    assert three >= 0.3


def test_write_then_read_back(servers: ServerThread) -> None:
    unit = unit_for(image_with(words=[0, 0, 0]))
    port = servers.serve([unit])

    async def main() -> list[int]:
        connection = fast_connection(port)
        try:
            await connection.write(1, [0x1234, 0x5678], 1, timeout_s=1)
            return await connection.read(HOLDING, 0, 3, 1, timeout_s=1)
        finally:
            await connection.close()

    assert run(main) == [0, 0x1234, 0x5678]
    assert unit.writes == [(1, [0x1234, 0x5678])]


def test_more_than_125_registers_is_refused_before_sending() -> None:
    async def main() -> None:
        connection = ModbusConnection("127.0.0.1", 9)
        with pytest.raises(ValueError, match=r"1\.\.125"):
            await connection.read(HOLDING, 0, 126, 1, timeout_s=1)
        await connection.close()

    run(main)


def test_unknown_unit_behind_a_gateway_is_unavailable(servers: ServerThread) -> None:
    port = servers.serve([SimUnit(unit_id=1, image=image_with(), extent={HOLDING: (0, 4)})])

    async def main() -> None:
        connection = fast_connection(port)
        try:
            # pymodbus's simulator answers exception 4 for an unknown unit; a gateway answers 11 (both: retry)
            with pytest.raises(DeviceUnavailableError, match="Modbus exception"):
                await connection.read(HOLDING, 0, 1, 9, timeout_s=1)
        finally:
            await connection.close()

    run(main)


def test_a_cancelled_request_raises_even_when_its_answer_arrives_with_the_cancellation(
    servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's wait_for (inside pymodbus) can return the answer and drop the cancellation."""
    port = servers.serve([unit_for(image_with())])
    real = AsyncModbusTcpClient.read_holding_registers
    in_flight = asyncio.Event()

    async def answer_despite_cancel(self: AsyncModbusTcpClient, *args: Any, **kwargs: Any) -> ModbusPDU:
        request = asyncio.ensure_future(real(self, *args, **kwargs))
        in_flight.set()
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            return await request  # what wait_for does when the answer is already there: cancellation lost

    async def main() -> None:
        connection = fast_connection(port)
        try:
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=1) == [11, 22]
            with monkeypatch.context() as patch:
                patch.setattr(AsyncModbusTcpClient, "read_holding_registers", answer_despite_cancel)
                task = asyncio.create_task(connection.read(HOLDING, 0, 2, 1, timeout_s=1))
                await in_flight.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # the same lost cancellation inside asyncio.timeout still ends as TimeoutError
                in_flight.clear()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0):
                        await connection.read(HOLDING, 0, 2, 1, timeout_s=1)
                assert in_flight.is_set()
            # a task that is already cancelling (cleanup after a cancel) may still talk to its devices
            current = asyncio.current_task()
            assert current is not None
            current.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            assert current.cancelling() == 1
            assert await connection.read(HOLDING, 0, 2, 1, timeout_s=1) == [11, 22]
            current.uncancel()
            assert connection.connected
        finally:
            await connection.close()

    run(main)
