# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""Commissioning commands: `hubctl read` (every configured device once) and `hubctl scan` (SunSpec models).

`register(sub)` adds both to hubctl's argument parser. The device modules
(pymodbus, aiomqtt, pysunspec2) are imported inside the commands, so that
other subcommands stay fast.

Exit codes: 0 every device read; 1 at least one device failed (each failure is
printed with its kind: unavailable, busy, protocol, identity); 2 usage (an
unknown --device); 78 a configuration that cannot be used.

MQTT devices need a broker: the one `hubctl run` uses (`--mqtt-url`,
$HUBCTL_MQTT_URL, `mqtt.url`, `service.mqtt_url`, with the `mqtt:` section's TLS
files and credentials: `hubctl.config.resolve.mqtt_broker`), else
mqtt://127.0.0.1:1883. A TLS file that cannot be used is exit 78. `read` waits up to each point's
`stale_after_s` (at most `--timeout`) for MQTT values; retained topics answer
at once.

Each battery and PV inverter also shows its `fallback`: what it does once no controller writes
(`Device.fallback_summary`, from the registers just read: "none: keeps the last setpoint", a
revert timer and what follows it, or the fallback value hubctl configured). `read` only reads: the
fallback is configured by `hubctl run` (`hubctl.service.fallbacks.FallbackKeeper`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubctl.config.resolve import DEFAULT_READ_MQTT_URL, mqtt_broker
from hubctl.errors import EX_CONFIG

if TYPE_CHECKING:
    import argparse

    from hubctl.codec.sunspec import DecodedModel, ModelHeader
    from hubctl.config.devices import Device as DeviceConfig
    from hubctl.config.resolve import BrokerSettings
    from hubctl.config.site import SiteConfig
    from hubctl.devices.base import Device, Reading
    from hubctl.errors import DeviceError

EX_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `read` and `scan` to hubctl's subcommands."""
    p = sub.add_parser("read", help="read every configured device once and print its values with units")
    p.add_argument("--config", required=True, help="site config with a devices: section")
    p.add_argument("--device", action="append", metavar="ID", help="only this device (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--mqtt-url",
        default=None,
        help=f"MQTT broker (default $HUBCTL_MQTT_URL, mqtt.url, service.mqtt_url or {DEFAULT_READ_MQTT_URL})",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for MQTT data (default 10)")
    p.set_defaults(func=_cmd_read)
    p = sub.add_parser("scan", help="list the SunSpec models a device offers")
    p.add_argument("address", metavar="HOST[:PORT]", help="Modbus TCP address (port 502 by default)")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per request (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_scan)


# --- hubctl read -------------------------------------------------------------------------------------------


def _cmd_read(args: argparse.Namespace) -> int:
    from hubctl.config.site import load_config, report_problems  # noqa: PLC0415 - keep others fast
    from hubctl.errors import ConfigError  # noqa: PLC0415 - keep others fast

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        return report_problems(exc.source, exc.problems)
    devices = list(cfg.devices)
    if args.device:
        known = {d.id for d in devices}
        unknown = [d for d in args.device if d not in known]
        if unknown:
            print(
                f"no device {', '.join(unknown)} in {args.config} (known: {', '.join(sorted(known))})",
                file=sys.stderr,
            )
            return EX_USAGE
        devices = [d for d in devices if d.id in set(args.device)]
    if not devices:
        print(f"{args.config}: no devices configured (devices: section)", file=sys.stderr)
        return EX_CONFIG
    broker = mqtt_broker(cfg, args.mqtt_url, os.environ, DEFAULT_READ_MQTT_URL)
    if any(d.driver == "mqtt" for d in devices):
        from hubctl.transport.mqtt import parse_url, tls_file_problems  # noqa: PLC0415 - keep others fast

        problems = [
            f"mqtt.{field}: {reason}"
            for field, reason in tls_file_problems(broker.ca_file, broker.cert_file, broker.key_file)
        ]
        try:
            parse_url(broker.url)
        except ValueError as exc:
            problems.append(f"{broker.source}: {exc}")
        if problems:
            return report_problems(args.config, problems)
    results = asyncio.run(_read_devices(cfg, devices, broker, args.timeout))
    failed = sum(1 for result in results.values() if not isinstance(result, tuple))
    if args.json:
        print(json.dumps({"devices": {i: _json_entry(r) for i, r in results.items()}}, indent=2))
    else:
        for device in devices:
            _print_entry(device, results[device.id])
    if failed:
        print(f"{failed} of {len(devices)} device(s) failed", file=sys.stderr)
        return 1
    return 0


async def _read_devices(
    cfg: SiteConfig, devices: list[DeviceConfig], broker: BrokerSettings, timeout_s: float
) -> dict[str, tuple[Device, Reading] | DeviceError | str]:
    from hubctl.devices import build_device  # noqa: PLC0415
    from hubctl.devices.mqtt import MqttDevice, MqttHub  # noqa: PLC0415
    from hubctl.errors import (  # noqa: PLC0415
        DeviceConfigError,
        DeviceError,
        DeviceUnavailableError,
    )
    from hubctl.transport.modbus import ConnectionPool  # noqa: PLC0415

    rated = cfg.pv_rated_kw()
    hub = MqttHub.from_broker(broker) if any(d.driver == "mqtt" for d in devices) else None
    results: dict[str, tuple[Device, Reading] | DeviceError | str] = {}
    built: list[Device] = []
    async with ConnectionPool() as pool:
        for config in devices:
            try:
                built.append(
                    build_device(
                        config,
                        pool=pool,
                        mqtt=hub,
                        rated_kw=rated.get(config.id),
                        revert_s=cfg.service.revert_s,  # what `hubctl run` writes: the fallback lines say it
                    )
                )
            except DeviceConfigError as exc:
                results[config.id] = f"configuration: {exc}"
        hub_error: DeviceError | None = None
        if hub is not None:
            await hub.start()
            try:
                await hub.wait_connected(min(timeout_s, 5.0))
            except DeviceUnavailableError as exc:
                hub_error = exc

        async def one(device: Device) -> None:
            try:
                if isinstance(device, MqttDevice):
                    if hub_error is not None:
                        raise hub_error
                    wait = max(p.stale_after_s for p in device.spec.points.values())
                    await device.wait_for_data(min(wait, timeout_s))
                results[device.id] = (device, await device.read())
            except DeviceError as exc:
                results[device.id] = exc

        try:
            await asyncio.gather(*(one(device) for device in built))
        finally:
            if hub is not None:
                await hub.stop()
    return {config.id: results[config.id] for config in devices}


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e9 else f"{value:.6g}"
    return f"{text} {unit}".rstrip()


def _print_entry(config: DeviceConfig, result: tuple[Device, Reading] | DeviceError | str) -> None:
    where = f"{config.driver}"
    if config.modbus is not None:
        where += f" @ {config.modbus.host}:{config.modbus.port}"
    if not isinstance(result, tuple):
        kind = result if isinstance(result, str) else f"{result.kind}: {result}"
        print(f"{config.id} ({config.role.value}, {where}): FAILED: {kind}")
        return
    device, reading = result
    print(f"{config.id} ({config.role.value}, {where})")
    from hubctl.devices.base import ROLE_UNITS  # noqa: PLC0415

    width = max((len(k) for k in (*reading.values, *reading.points)), default=10) + 2
    for key, value in reading.values.items():
        print(f"  {key:<{width}}{_format(value, ROLE_UNITS.get(key, ''))}")
    fallback = device.fallback_summary(reading)
    if fallback is not None:
        print(f"  {'fallback':<{width}}{fallback}")
    print("  points:")
    for name, quantity in reading.points.items():
        mark = "  (stale)" if name in reading.stale else ""
        print(f"    {name:<{width}}{_format(quantity.value, quantity.unit)}{mark}")


def _json_entry(result: tuple[Device, Reading] | DeviceError | str) -> dict[str, Any]:
    from hubctl.devices.base import ROLE_UNITS  # noqa: PLC0415

    if isinstance(result, str):
        return {"ok": False, "error": {"kind": "configuration", "message": result, "retry": False}}
    if not isinstance(result, tuple):
        return {"ok": False, "error": {"kind": result.kind, "message": str(result), "retry": result.retry}}
    device, reading = result
    return {
        "ok": True,
        "role": reading.role.value,
        "driver": device.config.driver,
        "values": {k: {"value": v, "unit": ROLE_UNITS.get(k, "")} for k, v in reading.values.items()},
        "points": {k: {"value": q.value, "unit": q.unit} for k, q in reading.points.items()},
        "stale": list(reading.stale),
        "fallback": device.fallback_summary(reading),
    }


# --- hubctl scan -------------------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """HOST[:PORT] (an IPv6 address in brackets: [::1]:502)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "502"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "502"
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"not a HOST[:PORT]: {text!r}")
    return host, int(port)


def _cmd_scan(args: argparse.Namespace) -> int:
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    from hubctl.errors import DeviceError  # noqa: PLC0415

    try:
        headers, models, problems = asyncio.run(_scan(host, port, args.unit, args.timeout))
    except DeviceError as exc:
        print(f"{host}:{port} unit {args.unit}: {exc.kind}: {exc}", file=sys.stderr)
        return 1
    from hubctl.codec.sunspec import identity  # noqa: PLC0415

    ident = identity(models)
    if args.json:
        out = {
            "address": f"{host}:{port}",
            "unit": args.unit,
            "identity": ident,
            "models": [
                {
                    "id": h.model_id,
                    "name": h.name,
                    "label": h.label,
                    "address": h.address,
                    "length": h.length,
                    "problem": problems.get(h.address),
                }
                for h in headers
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"{host}:{port} unit {args.unit}: SunSpec, {len(headers)} model(s)")
    if ident:
        print("  " + ", ".join(f"{k} {v}" for k, v in ident.items()))
    print(f"  {'address':>7}  {'model':>5}  {'length':>6}  name")
    for h in headers:
        note = f"  ({problems[h.address]})" if h.address in problems else ""
        label = f" - {h.label}" if h.label else ""
        print(f"  {h.address:>7}  {h.model_id:>5}  {h.length:>6}  {h.name}{label}{note}")
    return 0


async def _scan(
    host: str, port: int, unit: int, timeout_s: float
) -> tuple[list[ModelHeader], dict[int, DecodedModel], dict[int, str]]:
    from hubctl.codec import sunspec  # noqa: PLC0415
    from hubctl.codec.registers import Function  # noqa: PLC0415
    from hubctl.errors import DeviceProtocolError  # noqa: PLC0415
    from hubctl.transport.modbus import ModbusConnection  # noqa: PLC0415

    connection = ModbusConnection(host, port, connect_timeout_s=timeout_s)
    try:

        async def read(address: int, count: int) -> list[int]:
            return await connection.read(Function.HOLDING, address, count, unit, timeout_s=timeout_s)

        headers = await sunspec.discover(read)
        models: dict[int, DecodedModel] = {}
        problems: dict[int, str] = {}
        for header in headers:
            try:
                decoded = await sunspec.read_models(read, [header])
            except DeviceProtocolError as exc:
                problems[header.address] = str(exc)
                continue
            models.setdefault(header.model_id, decoded[header.model_id])
        return headers, models, problems
    finally:
        await connection.close()
