# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Test harness for the device tests: real pymodbus servers, an asyncio runner, and a leak check.

Other device test modules import from here (pytest puts tests/ on sys.path):

- `ServerThread`: pymodbus servers (the SimDevice/SimData API) on free loopback
  ports, in their own event loop on a thread, like a device on the network.
  Each unit serves a `RegisterImage` through an async action, so updates show
  on the next read; faults are injected per unit (busy, illegal address,
  silent) and per server (stopped = connection refused).
- `run(main)`: runs one async test body in a fresh loop and records any task
  it leaves running.
- `no_leaks` (function `leak_check`): an autouse fixture, imported into each device test module, that
  fails a test leaving a task, an open hubctl Modbus connection, an MQTT
  client, or a socket behind.

A request that arrives while its unit is "silent" is never answered (held
until the server stops): pymodbus' request handler reuses the last request's
transaction id when a delayed action finally returns, so answering late could
hand one unit's answer to another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hubctl.codec.registers import Function, encode
from hubctl.transport.modbus import ModbusConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, Mapping

    from hubctl.codec.regmap import Point

T = TypeVar("T")
DRIVERS = Path(__file__).resolve().parent.parent / "drivers"
LEAKS: list[str] = []
_FC_SPACE = {3: Function.HOLDING, 6: Function.HOLDING, 16: Function.HOLDING, 4: Function.INPUT}


# --- Async runner and leak check ---------------------------------------------------------------------------


def run(main: Callable[[], Coroutine[Any, Any, T]], *, timeout_s: float = 20.0) -> T:
    """Run `main()` in a fresh event loop; record (and cancel) tasks it leaves running."""

    async def wrapper() -> T:
        async with asyncio.timeout(timeout_s):
            result = await main()
        for _ in range(3):  # let close callbacks run
            await asyncio.sleep(0)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        LEAKS.extend(f"task {t.get_name()} ({t.get_coro()!r}) still running" for t in left)
        for task in left:
            task.cancel()
        return result

    with asyncio.Runner() as runner:
        return runner.run(wrapper())


def open_sockets() -> int:
    """Sockets this process holds open (Linux /proc)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if str(fd.readlink()).startswith("socket:"):
                count += 1
    return count


def mqtt_clients_open() -> int:
    try:
        from hubctl.devices.mqtt import MqttHub  # noqa: PLC0415 - optional module, imported late
    except ImportError:
        return 0
    return len(MqttHub.running())


@pytest.fixture(autouse=True, name="no_leaks")
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves a task, a connection, an MQTT client or a socket open."""
    LEAKS.clear()
    gc.collect()
    before = open_sockets()
    yield
    problems = list(LEAKS)
    problems += [f"Modbus connection {c.label} left open" for c in ModbusConnection.open_connections()]
    if clients := mqtt_clients_open():
        problems.append(f"{clients} MQTT client(s) left running")
    gc.collect()
    deadline = time.monotonic() + 1.0
    while (after := open_sockets()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
        gc.collect()
    if after > before:
        problems.append(f"{after - before} socket(s) left open")
    LEAKS.clear()
    if problems:
        pytest.fail("leaked: " + "; ".join(problems))


# --- Register images served by pymodbus ---------------------------------------------------------------------


class RegisterImage:
    """The registers of one unit: words by function space and address (unset registers read 0)."""

    def __init__(self) -> None:
        self.words: dict[Function, dict[int, int]] = {Function.HOLDING: {}, Function.INPUT: {}}

    def set_words(self, function: Function, address: int, words: list[int]) -> None:
        for offset, word in enumerate(words):
            self.words[function][address + offset] = word

    def get_words(self, function: Function, address: int, count: int) -> list[int]:
        space = self.words[function]
        return [space.get(address + i, 0) for i in range(count)]

    def put(self, point: Point, value: float, scale_factors: Mapping[str, int | None] | None = None) -> None:
        """Encode `value` into the point's registers with hubctl's codec (bounds of rw points apply)."""
        self.set_words(point.function, point.address, encode(point, value, scale_factors))

    def put_raw(self, point: Point, raw: int) -> None:
        """Store a raw pattern (e.g. a "not implemented" sentinel) in the point's registers."""
        words = [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(point.count))]
        if point.word_order.value == "little":
            words.reverse()
        self.set_words(point.function, point.address, words)


@dataclass
class SimUnit:
    """One unit id on a server: its image, an injected fault, and the writes it received."""

    unit_id: int
    image: RegisterImage
    extent: dict[Function, tuple[int, int]]  # served register range per function: [start, end)
    fault: str | None = None  # None | "busy" | "illegal" | "silent" | "failure"
    writes: list[tuple[int, list[int]]] = field(default_factory=list)
    write_times: dict[int, float] = field(default_factory=dict)
    reverts: dict[int, tuple[float, list[int]]] = field(default_factory=dict)
    reads: int = 0
    hold: asyncio.Event | None = None

    def revert_after(self, address: int, revert_s: float, fallback: list[int]) -> None:
        """Make the registers at `address` fall back to `fallback` when not written for `revert_s`."""
        self.reverts[address] = (revert_s, fallback)

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        fault = self.fault
        if fault == "silent":
            if self.hold is None:
                self.hold = asyncio.Event()
            await self.hold.wait()  # never answered: see the module docstring
        if fault == "busy":
            return ExcCodes.DEVICE_BUSY
        if fault == "illegal":
            return ExcCodes.ILLEGAL_ADDRESS
        if fault == "failure":
            return ExcCodes.DEVICE_FAILURE
        function = _FC_SPACE.get(function_code)
        if function is None:
            return ExcCodes.ILLEGAL_FUNCTION
        now = time.monotonic()
        if set_values is not None:
            words = [int(v) for v in set_values]
            self.writes.append((address, words))
            self.image.set_words(function, address, words)
            for offset in range(len(words)):
                self.write_times[address + offset] = now
            return None
        self.reads += 1
        for revert_address, (revert_s, fallback) in self.reverts.items():
            if now - self.write_times.get(revert_address, now) > revert_s:
                self.image.set_words(Function.HOLDING, revert_address, fallback)
        offset = address - start_address
        registers[offset : offset + count] = self.image.get_words(function, address, count)
        return None

    def sim_device(self) -> SimDevice:
        blocks: list[list[SimData]] = [[], []]
        for index, function in enumerate((Function.HOLDING, Function.INPUT)):
            start, end = self.extent.get(function, (60000, 60001))
            blocks[index].append(
                SimData(address=start, count=1, values=[0] * (end - start), datatype=DataType.REGISTERS)
            )
        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit_id,
            simdata=(bits, list(bits), blocks[0], blocks[1]),
            action=self.action,
        )


def extent_of(image: RegisterImage, *, margin: int = 0) -> dict[Function, tuple[int, int]]:
    """The register range per function that covers everything in `image` (+ `margin` each side)."""
    extent = {}
    for function, words in image.words.items():
        if words:
            extent[function] = (max(0, min(words) - margin), min(0x10000, max(words) + 1 + margin))
    return extent


class ServerThread:
    """pymodbus TCP servers in an event loop of their own, on a thread: devices on the network."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="modbus-servers", daemon=True)
        self._thread.start()
        self._servers: dict[int, tuple[ModbusTcpServer | None, list[SimUnit]]] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 5.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def serve(self, units: list[SimUnit], port: int = 0) -> int:
        """Start a server for `units` on 127.0.0.1 (a free port when 0); return its port."""
        server, actual = self.call(self._start(units, port))
        self._servers[actual] = (server, units)
        return actual

    def stop(self, port: int) -> None:
        """Stop the server on `port`: new connections are refused, open ones are closed."""
        server, units = self._servers[port]
        if server is not None:
            self.call(server.shutdown())  # type: ignore[no-untyped-call]
        self._servers[port] = (None, units)

    def restart(self, port: int) -> None:
        _, units = self._servers[port]
        self.stop(port)
        server, _ = self.call(self._start(units, port))
        self._servers[port] = (server, units)

    def close(self) -> None:
        for port in list(self._servers):
            self.stop(port)
        self.call(self._cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _start(self, units: list[SimUnit], port: int) -> tuple[ModbusTcpServer, int]:
        server = ModbusTcpServer([unit.sim_device() for unit in units], address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        sockets = server.transport.sockets  # type: ignore[attr-defined]
        return server, int(sockets[0].getsockname()[1])

    async def _cancel_all(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(name="servers")
def server_thread() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


def unit_for(image: RegisterImage, unit_id: int = 1, *, margin: int = 0) -> SimUnit:
    return SimUnit(unit_id=unit_id, image=image, extent=extent_of(image, margin=margin))


# --- Self-tests of the harness ------------------------------------------------------------------------------


def test_server_serves_the_image_and_reflects_updates(servers: ServerThread) -> None:
    image = RegisterImage()
    image.set_words(Function.HOLDING, 100, [1, 2, 3])
    image.set_words(Function.INPUT, 7, [9])
    port = servers.serve([unit_for(image)])

    async def main() -> tuple[list[int], list[int], list[int]]:
        connection = ModbusConnection("127.0.0.1", port)
        try:
            first = await connection.read(Function.HOLDING, 100, 3, 1, timeout_s=2)
            image.set_words(Function.HOLDING, 101, [42])
            second = await connection.read(Function.HOLDING, 100, 3, 1, timeout_s=2)
            inputs = await connection.read(Function.INPUT, 7, 1, 1, timeout_s=2)
        finally:
            await connection.close()
        return first, second, inputs

    assert run(main) == ([1, 2, 3], [1, 42, 3], [9])


def test_leak_check_sees_a_running_task() -> None:
    async def main() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(10), name="forgotten")

    run(main)
    assert any("forgotten" in leak for leak in LEAKS)
    LEAKS.clear()
