"""`hubctl simulate`: a whole simulated park of Modbus and MQTT devices on loopback, in (scaled) real time.

    hubctl simulate --scenario FILE [--speed N] [--start-s S] [--write-config PATH]
                    [--mqtt-url URL] [--park-meter [--common-load-kw KW]] [--host H] [--control-port P]
                    [--comm-loss-s S] [--battery-fallback-kw KW] [--pv-fallback-pct PCT]
                    [--pv-units N] [--battery-units N] [-v]

Loads a scenario (SCENARIOS.md), starts one device per company role (grid
meter, PV inverter, battery; `--pv-units`/`--battery-units` split a company's
PV or battery over several devices) on its own loopback port, the RS485 meters behind
one gateway port with several unit ids, optionally an MQTT meter publishing to
the broker at --mqtt-url, and a JSON-lines control port for fault injection
(`simulators.faults`). Prints where everything listens, writes a hubctl site
config pointing at the devices to --write-config (validated with the same
models as `hubctl check-config`), prints `ready`, and runs until SIGINT or
SIGTERM, then stops every device and exits 0.

Exit codes: 0 after a clean stop, 78 (EX_CONFIG) for a bad scenario, 1 when
the park cannot start (a port in use, a driver that does not load).

Decisions: the simulator modules are imported when the command runs, not when
the parser is built, so `hubctl schema` and `hubctl check-config` stay fast;
the listing goes to stdout line by line (flushed), so a test or a script
running this as a subprocess can wait for `ready` and parse the addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hubctl.config.site import report_problems
from hubctl.errors import ConfigError, RegisterMapError

if TYPE_CHECKING:
    from simulators.park_sim import SimulatedPark

log = logging.getLogger("hubctl.simulate")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number >= 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 8:
        raise argparse.ArgumentTypeError(f"{text}: must be a whole number from 1 to 8")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `simulate` subcommand to hubctl's parser."""
    p = sub.add_parser(
        "simulate",
        help="serve a scenario's park as simulated Modbus/MQTT devices on loopback, in real time",
    )
    p.add_argument("--scenario", required=True, help="scenario.yaml (SCENARIOS.md)")
    p.add_argument(
        "--speed", type=_positive, default=1.0, help="simulated seconds per real second (default 1)"
    )
    p.add_argument("--start-s", type=_non_negative, default=0.0, help="start this far into the scenario")
    p.add_argument("--write-config", metavar="PATH", help="write a hubctl site config for the simulated park")
    p.add_argument(
        "--mqtt-url", metavar="URL", help="mqtt://HOST[:PORT]: the last company's grid meter on MQTT"
    )
    p.add_argument("--park-meter", action="store_true", help="add a SunSpec meter on the park's connection")
    p.add_argument(
        "--common-load-kw",
        type=float,
        default=0.0,
        help="with --park-meter: a load at the park's connection no company meter sees (+ import)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--control-port", type=int, default=0, help="fault control port (default: any free one)")
    p.add_argument(
        "--comm-loss-s", type=_positive, help="devices fall back after this long without a request"
    )
    p.add_argument(
        "--battery-fallback-kw", type=float, default=0.0, help="battery power after a lapse (+ discharge)"
    )
    p.add_argument("--pv-fallback-pct", type=_non_negative, help="PV limit after a lapse (default: no limit)")
    p.add_argument(
        "--pv-units", type=_count, default=1, help="inverters per company sharing its PV (default 1)"
    )
    p.add_argument(
        "--battery-units", type=_count, default=1, help="battery systems per company sharing its battery"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the devices do")
    p.set_defaults(func=run)


def _say(line: str) -> None:
    print(line, flush=True)


def _write_config(sim: SimulatedPark, path: Path) -> None:
    import yaml  # noqa: PLC0415 - only this command needs it at run time

    header = (
        f"# hubctl site config for the simulated park of scenario {sim.scenario.name!r},\n"
        "# written by `hubctl simulate`; the device addresses hold while that process runs.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(sim.site_config_data(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


async def _serve(args: argparse.Namespace) -> int:
    from hubctl.config.scenario import load_scenario  # noqa: PLC0415 - heavy imports only when simulating
    from simulators.modbus_sim import DeviceOptions  # noqa: PLC0415
    from simulators.park_sim import SimulatedPark  # noqa: PLC0415

    scenario = load_scenario(Path(args.scenario))
    options = DeviceOptions(
        battery_fallback_kw=args.battery_fallback_kw,
        pv_fallback_limit_pct=args.pv_fallback_pct,
        comm_loss_s=args.comm_loss_s,
    )
    sim = SimulatedPark(
        scenario,
        speed=args.speed,
        start_s=args.start_s,
        host=args.host,
        mqtt_url=args.mqtt_url,
        park_meter=args.park_meter,
        control_port=args.control_port,
        options=options,
        pv_units=args.pv_units,
        battery_units=args.battery_units,
    )
    sim.park.common_load_kw = args.common_load_kw
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sim:
            for line in sim.describe():
                _say(line)
            if args.write_config:
                _write_config(sim, Path(args.write_config))
                _say(f"wrote {args.write_config}")
            _say("ready")
            await stop.wait()
            _say("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `hubctl simulate` (the parser's `func`)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.common_load_kw and not args.park_meter:
        print(
            "hubctl simulate: --common-load-kw is a load only a park meter sees: give --park-meter too",
            file=sys.stderr,
        )
        return 2
    if not math.isfinite(args.common_load_kw):
        print("hubctl simulate: --common-load-kw must be finite", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except (ConfigError, RegisterMapError) as exc:
        return report_problems(exc.source, exc.problems)
    except (OSError, ValueError) as exc:
        print(f"hubctl simulate: {exc}", file=sys.stderr)
        return 1
