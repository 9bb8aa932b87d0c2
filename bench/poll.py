# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Reading throughput over loopback: hubctl's transport and drivers beside plain pymodbus, same run.

    .venv/bin/python bench/poll.py [--devices 200] [--seconds 3] [--rounds 2] [--map eastron-sdm630]

A child process serves `--devices` simulated meters, one pymodbus TCP server
(SimDevice/SimData API) per device on its own loopback port, each holding the
register map's points. This process then polls all of them as fast as they
answer, in alternating phases:

- plain: one pymodbus AsyncModbusTcpClient per device, reading the map's
  planned blocks with `read_input_registers` / `read_holding_registers`, no
  decoding: the baseline hubctl is measured against.
- hubctl: one `ModbusMapDevice` per device over a `ConnectionPool`: planned
  reads, lock, per-request timeout, error mapping, decoding every point and
  the role values, a `Reading` per poll.

Both phases read the same registers in the same number of requests. The
figures: register reads (requests) per second, device polls per second, the
client's CPU time per request, and hubctl's throughput as a share of plain
pymodbus (target: at least 80 %). Servers run in another process so that the
client's CPU cost shows; with both on one machine the servers usually bound the
rate, which is why CPU per request is printed as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hubctl.codec.registers import Function, encode
from hubctl.codec.regmap import RegisterMap, load_map
from hubctl.config.devices import Device as DeviceConfig
from hubctl.devices.mapped import ModbusMapDevice
from hubctl.transport.modbus import ConnectionPool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

DRIVERS = Path(__file__).resolve().parent.parent / "drivers"


# --- Server side (child process) ---------------------------------------------------------------------------


def image_blocks(register_map: RegisterMap) -> tuple[list[SimData], list[SimData]]:
    """Holding and input SimData covering every point of the map (values 1.0 .. n, gaps 0)."""
    words: dict[Function, dict[int, int]] = {Function.HOLDING: {}, Function.INPUT: {}}
    for index, point in enumerate(register_map.points):
        value = (
            point.write_min
            if point.write_min is not None
            else (index + 1) * abs(point.scale) * 10 * point.sign
        )
        for offset, word in enumerate(encode(point, value)):
            words[point.function][point.address + offset] = word
    blocks: list[list[SimData]] = []
    for function in (Function.HOLDING, Function.INPUT):
        space = words[function]
        if not space:
            blocks.append([SimData(address=60000, count=1, values=[0], datatype=DataType.REGISTERS)])
            continue
        start, end = min(space), max(space) + 1
        values = [space.get(a, 0) for a in range(start, end)]
        blocks.append([SimData(address=start, count=1, values=values, datatype=DataType.REGISTERS)])
    return blocks[0], blocks[1]


async def serve(devices: int, map_name: str) -> None:
    register_map = load_map(DRIVERS / f"{map_name}.yaml")
    holding, inputs = image_blocks(register_map)
    bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
    servers = []
    ports = []
    for _ in range(devices):
        device = SimDevice(id=register_map.default_unit_id, simdata=(bits, list(bits), holding, inputs))
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
        ports.append(int(server.transport.sockets[0].getsockname()[1]))  # type: ignore[attr-defined]
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for server in servers:
        await server.shutdown()  # type: ignore[no-untyped-call]


# --- Client side -------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    requests: int
    polls: int
    wall_s: float
    cpu_s: float
    latencies_s: list[float]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.wall_s

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / max(self.requests, 1) * 1e6


async def timed(mode: str, seconds: float, pollers: list[Callable[[], Awaitable[int]]]) -> Result:
    """Run every poller in a loop for `seconds`; each call returns the requests it made."""
    counts = [0, 0]
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def loop(poll: Callable[[], Awaitable[int]]) -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            made = await poll()  # not `counts[0] += await poll()`: that reads counts[0] before awaiting
            counts[0] += made
            counts[1] += 1
            latencies.append(time.monotonic() - started)

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(poll) for poll in pollers))
    return Result(mode, counts[0], counts[1], time.monotonic() - wall0, time.process_time() - cpu0, latencies)


async def plain_phase(ports: list[int], register_map: RegisterMap, seconds: float) -> Result:
    plan = register_map.read_plan()
    unit = register_map.default_unit_id
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
        for port in ports
    ]
    try:
        for client in clients:
            if not await client.connect():
                raise RuntimeError("plain pymodbus client could not connect")

        def poller(client: AsyncModbusTcpClient) -> Callable[[], Awaitable[int]]:
            async def poll() -> int:
                for block in plan:
                    if block.function is Function.HOLDING:
                        response = await client.read_holding_registers(
                            block.address, count=block.count, device_id=unit
                        )
                    else:
                        response = await client.read_input_registers(
                            block.address, count=block.count, device_id=unit
                        )
                    if response.isError() or len(response.registers) != block.count:
                        raise RuntimeError(f"plain read failed: {response}")
                return len(plan)

            return poll

        return await timed("plain pymodbus", seconds, [poller(c) for c in clients])
    finally:
        for client in clients:
            client.close()


async def hubctl_phase(ports: list[int], register_map: RegisterMap, map_name: str, seconds: float) -> Result:
    requests = len(register_map.read_plan())
    async with ConnectionPool() as pool:
        devices = []
        for index, port in enumerate(ports):
            config = DeviceConfig.model_validate(
                {
                    "id": f"meter-{index}",
                    "company": "bench",
                    "role": "grid_meter",
                    "driver": map_name,
                    "modbus": {"host": "127.0.0.1", "port": port},
                }
            )
            devices.append(
                ModbusMapDevice(config, register_map, pool.get("127.0.0.1", port, register_map.transport))
            )
        for device in devices:  # connect outside the timing, as the plain clients do
            await device.read()

        def poller(device: ModbusMapDevice) -> Callable[[], Awaitable[int]]:
            async def poll() -> int:
                reading = await device.read()
                if reading.power_kw is None:
                    raise RuntimeError("hubctl read without power")
                return requests

            return poll

        return await timed("hubctl", seconds, [poller(d) for d in devices])


def table(results: list[Result], devices: int, map_name: str, requests_per_poll: int) -> str:
    lines = [
        (
            f"{devices} devices ({map_name}, {requests_per_poll} requests per poll), loopback,"
            " servers in a child process"
        ),
        f"{'mode':<16}{'requests/s':>12}{'polls/s':>10}{'p50 poll':>10}{'p99 poll':>10}{'CPU/request':>13}",
    ]
    for r in results:
        lat = sorted(r.latencies_s)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        lines.append(
            f"{r.mode:<16}{r.requests_per_s:>12.0f}{r.polls_per_s:>10.0f}{p50:>8.1f}ms{p99:>8.1f}ms"
            f"{r.cpu_us_per_request:>11.0f}us"
        )
    plain = [r for r in results if r.mode == "plain pymodbus"]
    ours = [r for r in results if r.mode == "hubctl"]
    if plain and ours:
        # Paired per round (the phases of one round ran back to back): robust to a machine whose load drifts.
        shares = [o.requests_per_s / p.requests_per_s for p, o in zip(plain, ours, strict=True)]
        share = statistics.median(shares)
        cpu = statistics.median(
            o.cpu_us_per_request / p.cpu_us_per_request for p, o in zip(plain, ours, strict=True)
        )
        verdict = "meets" if share >= 0.8 else "misses"
        lines.append(
            f"hubctl throughput = {share:.0%} of plain pymodbus (median of {len(shares)} paired rounds:"
            f" {', '.join(f'{x:.0%}' for x in shares)}; {verdict} the 80 % target)"
        )
        lines.append(f"hubctl client CPU per request = {cpu:.2f} x plain pymodbus (decoding included)")
    return "\n".join(lines)


async def bench(devices: int, seconds: float, rounds: int, map_name: str) -> str:
    register_map = load_map(DRIVERS / f"{map_name}.yaml")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--devices",
        str(devices),
        "--map",
        map_name,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None  # created with a pipe
        ports: list[int] = json.loads(await child.stdout.readline())
        results = []
        for _ in range(rounds):
            results.append(await plain_phase(ports, register_map, seconds))
            results.append(await hubctl_phase(ports, register_map, map_name, seconds))
        return table(results, devices, map_name, len(register_map.read_plan()))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), 10)
        if child.returncode is None:
            child.kill()
            await child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--map", default="eastron-sdm630", help="register map in drivers/ (without transport delays)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.devices, args.map))
        return 0
    print(asyncio.run(bench(args.devices, args.seconds, args.rounds, args.map)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
