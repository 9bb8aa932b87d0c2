"""`hubctl run` (the gateway service) and `hubctl demo` (a simulated park with the real service).

    hubctl run --config FILE [--mqtt-url URL] [--influx-url URL] [--web HOST:PORT] [-v]
    hubctl demo [--scenario FILE] [--speed N] [--minutes M] [--start HH:MM] [--no-mqtt]

Exit codes of `run`: 0 after SIGTERM/SIGINT (fail-safe setpoints written,
`offline` published), 1 when the service failed, 78 (EX_CONFIG) for a config
that cannot be used: systemd's `RestartPreventExitStatus=78` stops restarting
a service that would fail the same way again.

`--speed`, `--start-utc` and `--trace` are for the demo and the tests against
`hubctl simulate --speed` (see `hubctl.service`); they are hidden from --help.

Logging goes to stderr without timestamps: journald adds them. APScheduler logs from WARNING up
only (its INFO lines for every job run would fill the journal).

A setting that is set but could not take effect (an InfluxDB URL without a state directory, spool
bounds without a spool, an `mqtt:` section without a broker, ...) is refused at start with exit
78 naming it (`hubctl.config.resolve.gateway_problems`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from hubctl.config.site import load_config, report_problems
from hubctl.errors import ConfigError


def _utc(text: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not an ISO date-time") from exc
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text}: needs a UTC offset")
    return moment.timestamp()


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return value


def listen_arg(text: str) -> str:
    """`--web HOST:PORT`, checked as the `web.listen` setting is."""
    from hubctl.config.site import parse_listen  # noqa: PLC0415

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run` and `demo` to hubctl's parser."""
    p = sub.add_parser(
        "run", help="the gateway service: poll, control, write setpoints (systemd Type=notify)"
    )
    p.add_argument("--config", required=True, help="site config YAML with devices")
    p.add_argument("--mqtt-url", metavar="URL", help="mqtt://HOST[:PORT] (else service.mqtt_url)")
    p.add_argument("--influx-url", metavar="URL", help="InfluxDB URL (else service.influx_url)")
    p.add_argument(
        "--web",
        metavar="HOST:PORT",
        type=listen_arg,
        help="serve the park page and /metrics there (else web.listen when the config has a web: section)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--speed", type=_positive, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--start-utc", type=_utc, default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace", metavar="FILE", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_run)

    d = sub.add_parser(
        "demo", help="a simulated park and the real service over Modbus TCP, live in the terminal"
    )
    d.add_argument("--scenario", default=None, help="scenario.yaml (default: the bundled demo park)")
    d.add_argument(
        "--speed",
        type=_positive,
        default=4.0,
        help="simulated seconds per second (default 4; devices with real-time quirks limit it)",
    )
    d.add_argument(
        "--minutes",
        type=_positive,
        default=4.5,
        help="real minutes to run (default 4.5: at 4x, the quarter-hour from 11:00 closes on screen)",
    )
    d.add_argument(
        "--start", default="10:59", help="local time of the scenario day to start at (default 10:59)"
    )
    d.add_argument("--no-mqtt", action="store_true", help="do not start a private mosquitto")
    d.add_argument(
        "--web",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="the park page (default 127.0.0.1:8765, a free port if taken; 'off': none)",
    )
    d.add_argument("--out", default="out/demo-live", help="where the trace and the config go")
    d.set_defaults(func=_cmd_demo)


def _cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # hubctl reports device errors itself
    # APScheduler says INFO twice a minute per job run ("Running job", "executed successfully"):
    # about 2,900 journal lines a day that tell nothing; its warnings (a missed run) stay
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    from hubctl.service.gateway import run_service  # noqa: PLC0415 - asyncio, devices: only when running
    from hubctl.service.options import Options  # noqa: PLC0415 - with the service

    options = Options(
        mqtt_url=args.mqtt_url,
        influx_url=args.influx_url,
        web=args.web,
        speed=args.speed,
        start_utc=args.start_utc,
        trace=Path(args.trace) if args.trace else None,
        env=dict(os.environ),
    )
    return run_service(cfg, options)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hubctl.cli.demo import run_demo  # noqa: PLC0415 - rich and the simulators only for the demo

    return run_demo(args)
