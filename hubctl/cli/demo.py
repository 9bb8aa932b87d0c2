"""`hubctl demo`: a simulated park and the real gateway service against it, live in the terminal.

Three processes, as on a real gateway: `hubctl simulate` serves the bundled
scenario's devices over Modbus TCP on loopback (accelerated), `hubctl run`
controls them (same accelerated clock, starting at the park's simulated time),
and a private mosquitto on a free port when one is installed (else the
service runs without MQTT, and the demo says so). The view follows the
service's trace (`--trace`, one JSON line per cycle): park power against the
caps, every company's grid, PV, battery and state of charge, and why the
controller does what it does. At the end (after `--minutes`, or Ctrl-C) the
service gets SIGTERM, exactly as systemd would stop it, and a KPI summary is
printed from the trace.

The park page (`hubctl run --web`, docs/web.md) opens too, at `--web` (default 127.0.0.1:8765, or
a free port when that one is taken; `--web off`: none); the demo prints its address and the park
manager's token, a fresh random one unless `$HUBCTL_WEB_MANAGER_TOKEN` is set. The service keeps
its ledger in `OUT/state` (emptied at the start), so the page has statements to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from hubctl.config.scenario import load_scenario

if TYPE_CHECKING:
    import argparse

REPO = Path(__file__).resolve().parents[2]  # hubctl/cli/demo.py -> the repository
DEFAULT_SCENARIO = REPO / "configs" / "scenarios" / "demo-park" / "scenario.yaml"
DEFAULT_WEB = "127.0.0.1:8765"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _web_listen(text: str) -> str | None:
    """Where the demo's park page listens: `text` (HOST:PORT), None for "off"; the default port taken:
    a free one."""
    if text == "off":
        return None
    if text != DEFAULT_WEB:
        return text
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8765))
        except OSError:
            return f"127.0.0.1:{_free_port()}"
    return text


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def _hubctl(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hubctl.cli", *args], cwd=REPO, **kwargs)  # noqa: S603


def _bar(value: float | None, cap: float | None, width: int = 30) -> str:
    if value is None or cap is None or cap <= 0:
        return ""
    filled = min(width, max(0, round(abs(value) / cap * width)))
    colour = "red" if abs(value) > cap else "green"
    return f"[{colour}]{'█' * filled}[/]{'·' * (width - filled)}"


def _kw(value: float | None) -> str:
    return "-" if value is None else f"{value:7.1f}"


def _view(record: dict[str, Any], companies: list[str], info: str, tz: dt.tzinfo) -> Group:
    park = record["park_grid_kw"]
    imp, exp = record["import_cap_kw"], record["export_cap_kw"]
    cap = imp if (park or 0) >= 0 else exp
    ts = dt.datetime.fromtimestamp(record["ts_utc"], tz)
    mode = record["mode"]
    head = (
        f"[bold]{ts:%Y-%m-%d %H:%M:%S}[/]  mode [{'green' if mode == 'normal' else 'red'}]{mode}[/]  "
        f"park {_kw(park)} kW  {_bar(park, cap)}\n"
        f"caps: import {imp} / export {exp} kW ({record['cap_source']})\n"
        f"{record['reason']}   cycle {record['latency_ms']:.1f} ms   {info}"
    )
    table = Table(expand=True)
    for col in ("company", "grid kW", "PV kW", "PV limit", "battery kW", "setpoint", "SoC %"):
        table.add_column(col, justify="left" if col == "company" else "right")
    for i, cid in enumerate(companies):
        soc = record["soc_pct"][i]
        table.add_row(
            cid,
            _kw(record["grid_kw"][i]),
            _kw(record["pv_kw"][i]),
            _kw(record["pv_limit_kw"][i]),
            _kw(record["battery_kw"][i]),
            _kw(record["setpoint_kw"][i]),
            "-" if soc is None else f"{soc:5.1f}",
        )
    down = ", ".join(record["down"]) or "none"
    return Group(Panel(head, title="hubctl demo"), table, f"devices down: {down}")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(records: list[dict[str, Any]], rc: int | None, mqtt: bool) -> Table:
    cycles = [r for r in records if r["kind"] == "cycle"]
    quarters = [r for r in records if r["kind"] == "quarter"]
    over_s = 0.0
    run = longest = 0
    for a, b in itertools.pairwise(cycles):
        p = a["park_grid_kw"]
        over = p is not None and (
            (a["import_cap_kw"] is not None and p > a["import_cap_kw"])
            or (a["export_cap_kw"] is not None and -p > a["export_cap_kw"])
        )
        if over:
            over_s += b["ts_utc"] - a["ts_utc"]
        run = run + 1 if over else 0
        longest = max(longest, run)
    seen = [c["park_grid_kw"] for c in cycles if c["park_grid_kw"] is not None]
    latency = [c["latency_ms"] for c in cycles]
    span_s = cycles[-1]["ts_utc"] - cycles[0]["ts_utc"] if len(cycles) > 1 else 0.0
    shutdown = next((r for r in records if r.get("event") == "shutdown"), None)
    rows = [
        ("simulated time controlled", f"{span_s / 60:.1f} min in {len(cycles)} cycles"),
        ("cycles in fail-safe", str(sum(c["mode"] == "failsafe" for c in cycles))),
        ("highest park import / export", f"{max(seen, default=0):.1f} / {-min(seen, default=0):.1f} kW"),
        ("seconds over a park cap (instant)", f"{over_s:.0f} s"),
        ("longest time over a park cap", f"{longest} cycles in a row"),
        ("quarter-hours closed / over the cap", f"{len(quarters)} / {sum(q['over'] for q in quarters)}"),
        ("cycle latency p50 / p99", f"{_percentile(latency, 0.5):.1f} / {_percentile(latency, 0.99):.1f} ms"),
        (
            "fail-safe writes at SIGTERM",
            "-" if shutdown is None else f"{shutdown['writes']} ({shutdown['failed']} failed)",
        ),
        ("service exit code", "-" if rc is None else str(rc)),
        ("MQTT", "private mosquitto" if mqtt else "none (mosquitto not installed)"),
    ]
    table = Table(title="hubctl demo: KPIs")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for label, value in rows:
        table.add_row(label, value)
    return table


def _wait_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> list[str]:
    if proc.stdout is None:
        raise RuntimeError("no stdout pipe")
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.decode().rstrip("\n"))
        if lines[-1] == "ready":
            return lines
    raise RuntimeError(f"the simulator did not start: {lines}")


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    scenario_path = Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    scenario = load_scenario(scenario_path)
    hours, minutes = (int(x) for x in args.start.split(":"))
    start_s = hours * 3600 + minutes * 60  # the bundled scenarios start at local midnight
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.jsonl"
    trace.unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    broker = None if args.no_mqtt else _mosquitto()
    mqtt_url = None
    rc: int | None = None
    records: list[dict[str, Any]] = []
    try:
        if broker is not None:
            port = _free_port()
            procs.append(
                subprocess.Popen(  # noqa: S603 - our own broker binary, fixed arguments
                    [broker, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            mqtt_url = f"mqtt://127.0.0.1:{port}"
            console.print(f"private mosquitto on {mqtt_url}")
        else:
            console.print("[yellow]mosquitto is not installed (or --no-mqtt): running without MQTT[/]")
        config = out / "site.yaml"
        sim = _hubctl(
            "simulate", "--scenario", str(scenario_path), "--speed", str(args.speed),
            "--start-s", str(start_s), "--write-config", str(config), stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(sim)
        lines = _wait_ready(sim, 60)
        console.print(f"simulated park: {lines[0]}")
        from simulators.faults import control_request  # noqa: PLC0415 - demo only

        control = next(line for line in lines if line.startswith("control")).split()[1]
        host, port_text = control.rsplit(":", 1)
        status = asyncio.run(control_request(host, int(port_text), {"op": "status"}))
        start_utc = dt.datetime.fromtimestamp(scenario.start_utc + float(status["t_s"]), dt.UTC)
        run_args = [
            "run",
            "--config",
            str(config),
            "--speed",
            str(args.speed),
            "--start-utc",
            start_utc.isoformat(),
            "--trace",
            str(trace),
        ]
        if mqtt_url is not None:
            run_args += ["--mqtt-url", mqtt_url]
        state = out / "state"
        shutil.rmtree(state, ignore_errors=True)  # a ledger of an earlier demo would overlap this one's
        env = {**os.environ, "STATE_DIRECTORY": str(state.resolve())}
        listen = _web_listen(args.web)
        token = env.get("HUBCTL_WEB_MANAGER_TOKEN") or secrets.token_urlsafe(18)
        if listen is not None:
            run_args += ["--web", listen]
            env["HUBCTL_WEB_MANAGER_TOKEN"] = token
        log_file = (out / "service.log").open("wb")
        service = _hubctl(*run_args, stderr=log_file, env=env)
        procs.append(service)
        console.print(f"hubctl run started (log: {out / 'service.log'}); Ctrl-C ends the demo")
        if listen is not None:
            host, _, web_port = listen.rpartition(":")
            console.print(
                f"park page: [bold]http://{host}:{web_port}/[/]  (park manager's token: {token})",
                soft_wrap=True,
            )
        companies = [c.id for c in scenario.config.companies]
        info = f"speed {args.speed:g}x"
        offset = 0
        deadline = time.monotonic() + args.minutes * 60
        with contextlib.suppress(KeyboardInterrupt), Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline and service.poll() is None:
                if trace.exists():
                    with trace.open(encoding="utf-8") as f:
                        f.seek(offset)
                        text = f.read()
                    complete = text[: text.rfind("\n") + 1]
                    offset += len(complete.encode())
                    new = [json.loads(line) for line in complete.splitlines() if line]
                    records.extend(new)
                    cycles = [r for r in new if r["kind"] == "cycle"]
                    if cycles:
                        live.update(_view(cycles[-1], companies, info, scenario.config.tz))
                time.sleep(0.25)
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
        rc = service.wait(timeout=10)
        log_file.close()
        with trace.open(encoding="utf-8") as f:
            f.seek(offset)
            records.extend(json.loads(line) for line in f.read().splitlines() if line)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    console.print(_summary(records, rc, mqtt_url is not None))
    return 0 if rc == 0 else 1
