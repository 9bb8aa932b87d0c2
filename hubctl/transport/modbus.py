# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Modbus TCP transport: one connection per host:port, shared by every unit id behind it.

This is the boundary where library errors become hubctl's device errors, once.
Above it (`hubctl.devices`, `hubctl.codec.sunspec`) nothing imports pymodbus.

Decisions:

- **pymodbus frames, hubctl owns the connection.** The client is created with
  `retries=0` and `reconnect_delay=0` (its own reconnect off), and its
  "close after retries + 3 unanswered requests" counter is set out of reach
  (`set_max_no_responses`): left on, one silent unit id behind a gateway would
  cut off every other unit on the same connection (DOMAIN.md).
- **Silence policy.** A timeout fails that request only. The connection is
  dropped (and reopened on the next request) after `max_silent` consecutive
  timeouts with no answer from any unit in between: then the TCP connection
  itself is suspect (a half-open socket), not one unit. A unit that answers
  resets the count, so one silent unit cannot starve the others.
- **One request at a time** per connection (an asyncio.Lock held for the
  request, not for a whole device read: units interleave). Every request has
  a timeout, the caller's: it is set as pymodbus' own request timeout just
  before the request (under the lock), and a timeout is told from other I/O
  errors by pymodbus' unanswered-request counter having moved. That reuses the
  one timer pymodbus arms anyway; an extra `asyncio.timeout` per request cost
  about 10 us, a tenth of the client's work per request (bench/poll.py). The
  connect has a timeout of its own (`asyncio.timeout`). An answer that arrives
  after its timeout is dropped by pymodbus' framer (transaction id mismatch).
- **A connection lost mid-request fails that request at once** instead of
  after its timeout: the disconnect callback fails pymodbus' pending response
  future. This and the timeout above use pymodbus internals (`client.ctx`:
  `comm_params.timeout_connect`, `count_until_disconnect`, `response_future`),
  pinned by pymodbus >=3.16.1,<3.17; the transport tests fail if they change.
- **Reconnect** with capped exponential backoff and jitter (`backoff_s`). While
  backing off, requests fail immediately with DeviceUnavailableError (a poller
  must not queue behind a dead device). After a connection that worked is lost
  the first attempt is immediate.
- **Transport quirks** come from the register maps: delay after connect,
  delay between requests (the largest of all devices sharing the connection
  wins). A `single_client` device is served well by the pool as it is: hubctl
  never opens a second connection to a host:port.
- **Writes** use function 16 (write multiple registers) even for one register:
  SunSpec requires it, and Victron and Huawei accept it; function 6 is optional
  in SunSpec.
- **Cancellation always raises.** A request whose task was cancelled while
  it ran raises CancelledError even when pymodbus returned its answer (or its
  error) instead: Python 3.11's `asyncio.wait_for` loses a cancellation that
  arrives with the answer (`_request`).
- **Logging**: transitions only (connected after failures, lost, dropped for
  silence), once each; pymodbus' own log lines are left to pymodbus' logger.

Errors (the one hierarchy for every device driver, Modbus or MQTT; the class
says whether to retry):

- DeviceUnavailableError: cannot connect, timeout, connection lost, gateway
  target not answering (exceptions 4, 0x0A, 0x0B). Retry later.
- DeviceBusyError: exception 6 (device busy) or 5 (acknowledge: still working).
  Retry soon.
- DeviceProtocolError: illegal function/address/value (1, 2, 3), a malformed or
  short answer. Do not retry: the map or the device is wrong.
- DeviceIdentityError: the device is not what the config says (no SunSpec
  marker, a model missing). Do not retry.
- CommandRejectedError: hubctl refused a setpoint before writing (its kinds:
  SetpointUnsupportedError, SetpointOutOfBoundsError). CommandNotConfirmedError:
  the device took the write but reads back another value.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, ClassVar, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from hubctl.codec.registers import MODBUS_MAX_REGISTERS_PER_READ, Function
from hubctl.errors import (
    DeviceBusyError,
    DeviceError,
    DeviceProtocolError,
    DeviceUnavailableError,
)
from hubctl.transport.backoff import backoff_s

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from pymodbus.pdu import ModbusPDU

    from hubctl.codec.registers import ReadBlock
    from hubctl.codec.regmap import Transport

log = logging.getLogger("hubctl.modbus")  # the name the journal has always shown

_NO_DISCONNECT = 1 << 30  # pymodbus' unanswered-request counter, set out of reach


# --- Errors ----------------------------------------------------------------------------------------------


_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (still processing)",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_error(code: int, where: str) -> DeviceError:
    """The hubctl error for a Modbus exception response `code`."""
    text = f"{where}: Modbus exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"
    if code in {5, 6}:
        return DeviceBusyError(text)
    if code in {4, 10, 11}:
        return DeviceUnavailableError(text)
    return DeviceProtocolError(text)


# --- Connection ------------------------------------------------------------------------------------------


class ModbusConnection:
    """One TCP connection to host:port, one request at a time, for all unit ids behind it."""

    _open: ClassVar[set[ModbusConnection]] = set()

    def __init__(
        self,
        host: str,
        port: int = 502,
        *,
        connect_timeout_s: float = 3.0,
        delay_after_connect_s: float = 0.0,
        delay_between_requests_s: float = 0.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_silent: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.delay_after_connect_s = delay_after_connect_s
        self.delay_between_requests_s = delay_between_requests_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_silent = max_silent
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._silent = 0
        self._last_end = 0.0
        self._last_problem = ""
        self._closed = False
        self.requests = 0  # answered requests, for statistics

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @classmethod
    def open_connections(cls) -> tuple[ModbusConnection, ...]:
        """Connections whose socket is open (tests assert this is empty after each test)."""
        return tuple(cls._open)

    def adopt(self, transport: Transport) -> None:
        """Take on a device's transport quirks; the strictest of all devices on this connection wins."""
        self.delay_after_connect_s = max(self.delay_after_connect_s, transport.delay_after_connect_s)
        self.delay_between_requests_s = max(self.delay_between_requests_s, transport.delay_between_requests_s)

    async def read(
        self, function: Function, address: int, count: int, unit_id: int, *, timeout_s: float
    ) -> list[int]:
        """`count` registers of `function` from `address` on `unit_id`."""
        if not 1 <= count <= MODBUS_MAX_REGISTERS_PER_READ:
            raise ValueError(f"count must be 1..{MODBUS_MAX_REGISTERS_PER_READ}, got {count}")

        def call(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            if function is Function.HOLDING:
                return client.read_holding_registers(address, count=count, device_id=unit_id)
            return client.read_input_registers(address, count=count, device_id=unit_id)

        words = (await self._request(unit_id, timeout_s, call)).registers
        if len(words) != count:
            raise DeviceProtocolError(
                f"{self._where(unit_id)}: asked {count} registers at {function} {address}, got {len(words)}"
            )
        return words if isinstance(words, list) else list(words)

    async def read_blocks(
        self, blocks: Sequence[ReadBlock], unit_id: int, *, timeout_s: float
    ) -> list[tuple[ReadBlock, list[int]]]:
        """Answer every planned read, in order; the first failure raises."""
        return [
            (block, await self.read(block.function, block.address, block.count, unit_id, timeout_s=timeout_s))
            for block in blocks
        ]

    async def write(self, address: int, words: Sequence[int], unit_id: int, *, timeout_s: float) -> None:
        """Write holding registers from `address` (function 16)."""
        if not 1 <= len(words) <= 123:
            raise ValueError(f"a write holds 1..123 registers, got {len(words)}")
        values = list(words)
        await self._request(
            unit_id, timeout_s, lambda client: client.write_registers(address, values, device_id=unit_id)
        )

    async def close(self) -> None:
        """Close the socket; the connection cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            self._drop(None)

    # --- internals ---

    async def _request(
        self, unit_id: int, timeout_s: float, call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """One request; raises CancelledError when cancelled, even if pymodbus swallowed it.

        Python 3.11's `asyncio.wait_for` (which pymodbus awaits every request
        with) returns the answer, or raises the request's error, instead of
        CancelledError when the answer and the cancellation arrive in the same
        loop iteration; the task then stays "cancelling" but runs on (a
        TaskGroup waits for it forever). A cancellation requested of this task
        while the request ran (its `cancelling()` count grew) is raised here,
        so that every caller gets it; an `asyncio.timeout` around the call
        still turns it into TimeoutError, as that counts on it.
        """
        task = asyncio.current_task()
        cancelling = 0 if task is None else task.cancelling()
        try:
            response = await self._locked_request(unit_id, timeout_s, call)
        except DeviceError:
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError from None
            raise
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError
        return response

    async def _locked_request(
        self, unit_id: int, timeout_s: float, call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                client = await self._ensure_connected()
            if self.delay_between_requests_s > 0:
                wait = self._last_end + self.delay_between_requests_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            ctx = client.ctx
            ctx.comm_params.timeout_connect = timeout_s  # pymodbus' own per-request timer, see the docstring
            unanswered = ctx.count_until_disconnect
            try:
                response = await call(client)
            except ModbusIOException as exc:
                if ctx.count_until_disconnect < unanswered:  # pymodbus counted it as unanswered: a timeout
                    self._silent += 1
                    if self._silent >= self.max_silent:
                        self._drop(f"{self._silent} requests in a row unanswered")
                    raise DeviceUnavailableError(
                        f"{self._where(unit_id)}: no answer within {timeout_s:g} s"
                    ) from None
                raise DeviceProtocolError(f"{self._where(unit_id)}: unusable answer ({exc})") from None
            except ConnectionException as exc:
                self._drop("connection lost")
                raise DeviceUnavailableError(f"{self._where(unit_id)}: connection lost ({exc})") from None
            except ModbusException as exc:
                raise DeviceProtocolError(f"{self._where(unit_id)}: {exc}") from None
            except OSError as exc:
                self._drop(f"socket error: {exc}")
                raise DeviceUnavailableError(f"{self._where(unit_id)}: socket error ({exc})") from None
            finally:
                self._last_end = time.monotonic()
            self._silent = 0
            if response.function_code > 0x80:  # an exception response (what isError() tests)
                raise exception_error(response.exception_code, self._where(unit_id))
            self.requests += 1
            return response

    def _where(self, unit_id: int) -> str:
        return f"{self.host}:{self.port} unit {unit_id}"

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._closed:
            raise DeviceUnavailableError(f"{self.label}: connection closed")
        if self._client is not None:
            if self._client.connected:
                return self._client
            self._drop("connection lost")
        now = time.monotonic()
        if now < self._retry_at:
            wait = self._retry_at - now
            raise DeviceUnavailableError(
                f"{self.label}: not connected ({self._last_problem}); next attempt in {wait:.1f} s"
            )
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.label,
            timeout=self.connect_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_connect=self._on_connect_change,
        )
        client.set_max_no_responses(_NO_DISCONNECT)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            elapsed = time.monotonic() - started
            why = (
                f"no answer within {self.connect_timeout_s:g} s"
                if elapsed >= self.connect_timeout_s * 0.9
                else "connection refused or unreachable"
            )
            self._connect_failed(why)
            raise DeviceUnavailableError(f"{self.label}: cannot connect: {why}")
        if self._failures:
            log.info("%s: connected after %d failed attempts", self.label, self._failures)
        self._failures = 0
        self._silent = 0
        self._client = client
        ModbusConnection._open.add(self)
        if self.delay_after_connect_s > 0:
            await asyncio.sleep(self.delay_after_connect_s)
        self._last_end = time.monotonic()
        return client

    def _connect_failed(self, why: str) -> None:
        self._failures += 1
        if self._failures == 1:
            log.warning("%s: cannot connect: %s; retrying with backoff", self.label, why)
        self._last_problem = why
        delay = backoff_s(
            self._failures, self._rng.random(), initial_s=self.backoff_initial_s, max_s=self.backoff_max_s
        )
        self._retry_at = time.monotonic() + delay

    def _drop(self, reason: str | None) -> None:
        """Close the socket; `reason` None for a deliberate close (not logged)."""
        client, self._client = self._client, None
        ModbusConnection._open.discard(self)
        self._silent = 0
        if client is None:
            return
        client.close()
        if reason is not None:
            log.warning("%s: connection dropped: %s", self.label, reason)
            self._last_problem = reason
            self._retry_at = 0.0  # a connection that worked: try again at once

    def _on_connect_change(self, connected: bool) -> None:
        """pymodbus' disconnect callback: fail the request in flight now rather than at its timeout."""
        if connected or self._client is None:
            return
        pending = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException("connection lost"))


class ConnectionPool:
    """The connections of one process, one per host:port. Close it (or use `async with`) when done."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 3.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_silent: int = 3,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._max_silent = max_silent
        self._connections: dict[tuple[str, int], ModbusConnection] = {}

    def get(self, host: str, port: int, transport: Transport | None = None) -> ModbusConnection:
        """The connection to host:port, created on first use; `transport` quirks are adopted."""
        key = (host, port)
        connection = self._connections.get(key)
        if connection is None:
            connection = ModbusConnection(
                host,
                port,
                connect_timeout_s=self._connect_timeout_s,
                backoff_initial_s=self._backoff[0],
                backoff_max_s=self._backoff[1],
                max_silent=self._max_silent,
            )
            self._connections[key] = connection
        if transport is not None:
            connection.adopt(transport)
        return connection

    @property
    def connections(self) -> tuple[ModbusConnection, ...]:
        return tuple(self._connections.values())

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
