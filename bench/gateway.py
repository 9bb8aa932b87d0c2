# Copyright 2026 hubctl contributors
# SPDX-License-Identifier: Apache-2.0
"""The gateway at park scale: `hubctl run` against `hubctl simulate`, both as subprocesses (issue #4).

    .venv/bin/python bench/gateway.py [--companies 50] [--pv-units 2] [--seconds 90] [--warmup 20] [--seed 4]
                                      [--browsers 5]

Generates a synthetic park day (simulators/scenario_gen.py; every company a
grid meter, a battery and PV on two inverters: 4 devices per company, 200 for
50 companies), serves it with `hubctl simulate --pv-units 2` from
midday (`--start-s`, so that PV produces and the caps bite) and runs `hubctl
run` against the config the simulator wrote, at the config's 1 s cycle, in
real time, with `--trace`. After the service is ready and a warm-up, it
measures for `--seconds`:

- cycle latency p50/p99/max: the service's own `latency_ms` per cycle in the
  trace, from the snapshot of the readings to the last setpoint write of that
  cycle finished (or the write budget of 0.8 cycle spent);
- CPU of the `hubctl run` process as a share of one core: utime + stime from
  /proc/<pid>/stat over the window;
- its memory: VmRSS at the end of the window and VmHWM (the peak).

Targets: p99 <= 100 ms, CPU <= 25 %, RSS <= 150 MB. The simulator runs on the
same machine and competes for the same cores; its CPU is printed too.

With `--browsers N` (default 5; 0: the page off) the service serves the park page (issue #14,
`hubctl run --web` on a free loopback port, a manager token in its environment) and N clients
hold its server-sent event stream open through the whole run, as N open browser tabs would
(the stream is what a tab costs the gateway after it loaded: a state a second; the clients are
threads of this script, counting the events they receive).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from simulators.scenario_gen import GenOptions, write_scenario

REPO = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 100.0
TARGET_CPU_PCT = 25.0
TARGET_RSS_MB = 150.0
MIDDAY_S = 12 * 3600.0


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds (/proc/<pid>/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0]) / 1024
    return out


def spawn(
    args: list[str], stdout: int | IO[bytes], stderr: IO[bytes], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hubctl.cli", *args], cwd=REPO, stdout=stdout, stderr=stderr, env=env
    )


def wait_line(proc: subprocess.Popen[bytes], marker: str, timeout_s: float) -> list[str]:
    """stdout lines of `proc` up to and including one that is `marker`."""
    assert proc.stdout is not None  # started with a pipe
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()  # `hubctl simulate` flushes line by line
        if not raw:
            raise RuntimeError(f"exited {proc.wait()} before {marker!r}")
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if line == marker:
            return lines
    raise RuntimeError(f"no {marker!r} within {timeout_s} s")


def read_trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class EventClient(threading.Thread):
    """One browser's share of the page: `/api/events` held open, events counted until `stop`."""

    def __init__(self, port: int, token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.stop = port, token, stop
        self.events = 0
        self.error: str | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            for _ in range(100):  # the page opens after the service's first cycle: up to 10 s
                try:
                    conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {self.token}"})
                    break
                except ConnectionRefusedError:
                    conn.close()
                    time.sleep(0.1)
            response = conn.getresponse()
            if response.status != 200:
                self.error = f"HTTP {response.status}"
                return
            while not self.stop.is_set():
                try:
                    line = response.fp.readline()
                except TimeoutError:
                    continue
                if not line:
                    self.error = "the stream ended"
                    return
                if line.startswith(b"data: "):
                    self.events += 1
        except OSError as exc:
            self.error = str(exc)
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Figures:
    companies: int
    devices: dict[str, int]
    window_s: float
    cycles: list[dict[str, Any]]
    service_cpu_pct: float
    sim_cpu_pct: float
    memory: dict[str, float]
    browsers: list[EventClient]

    def report(self) -> str:
        lat = sorted(float(c["latency_ms"]) for c in self.cycles)
        modes: dict[str, int] = {}
        for c in self.cycles:
            modes[c["mode"]] = modes.get(c["mode"], 0) + 1
        writes = sum(int(c["writes"]) for c in self.cycles)
        failed = sum(int(c["failed_writes"]) for c in self.cycles)
        p50, p99 = statistics.median(lat), percentile(lat, 0.99)
        rss, hwm = self.memory.get("VmRSS", 0.0), self.memory.get("VmHWM", 0.0)
        roles = ", ".join(f"{n} {role}" for role, n in sorted(self.devices.items()))

        def verdict(ok: bool) -> str:
            return "meets" if ok else "MISSES"

        lines = [
            f"machine: {machine()}",
            f"park: {self.companies} companies, {sum(self.devices.values())} devices ({roles})",
            (
                f"window: {self.window_s:.0f} s real time, {len(self.cycles)} cycles at 1 s, "
                f"modes {modes}, {writes} writes ({failed} failed)"
            ),
            (
                f"cycle latency (snapshot to last write): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"max {lat[-1]:.1f} ms  [{verdict(p99 <= TARGET_P99_MS)} p99 <= {TARGET_P99_MS:g} ms]"
            ),
            (
                f"hubctl run CPU: {self.service_cpu_pct:.1f} % of one core  "
                f"[{verdict(self.service_cpu_pct <= TARGET_CPU_PCT)} <= {TARGET_CPU_PCT:g} %]"
            ),
            (
                f"hubctl run memory: VmRSS {rss:.1f} MB, VmHWM {hwm:.1f} MB  "
                f"[{verdict(max(rss, hwm) <= TARGET_RSS_MB)} <= {TARGET_RSS_MB:g} MB]"
            ),
            f"(hubctl simulate, same machine: {self.sim_cpu_pct:.1f} % of one core)",
        ]
        if self.browsers:
            events = [b.events for b in self.browsers]
            errors = [b.error for b in self.browsers if b.error]
            lines.insert(
                3,
                f"park page: {len(self.browsers)} browsers on its event stream, {min(events)}-{max(events)} "
                f"states each over the run{'; errors: ' + ', '.join(errors) if errors else ''}",
            )
        else:
            lines.insert(3, "park page: off")
        return "\n".join(lines)


def bench(args: argparse.Namespace, work: Path) -> Figures:
    opts = GenOptions(
        seed=args.seed,
        date=dt.date(2026, 6, 22),
        companies=args.companies,
        battery_share=1.0,
        pv_share=1.0,
        pv_fraction=1.0,
    )
    scenario = write_scenario(opts, work / "scenario")
    site = work / "site.yaml"
    trace = work / "trace.jsonl"
    sim_err = (work / "simulate.log").open("wb")
    run_err = (work / "run.log").open("wb")
    sim = spawn(
        [
            "simulate",
            *("--scenario", str(scenario), "--start-s", str(MIDDAY_S)),
            *("--write-config", str(site), "--pv-units", str(args.pv_units)),
        ],
        subprocess.PIPE,
        sim_err,
    )
    service: subprocess.Popen[bytes] | None = None
    browsers: list[EventClient] = []
    stopping = threading.Event()
    try:
        wait_line(sim, "ready", 120)
        config = yaml.safe_load(site.read_text(encoding="utf-8"))
        devices: dict[str, int] = {}
        for d in config["devices"]:
            devices[d["role"]] = devices.get(d["role"], 0) + 1
        run_args = ["run", "--config", str(site), "--trace", str(trace)]
        env = dict(os.environ)
        token = secrets.token_urlsafe(18)
        port = free_port()
        if args.browsers:
            run_args += ["--web", f"127.0.0.1:{port}"]
            env["HUBCTL_WEB_MANAGER_TOKEN"] = token
        service = spawn(run_args, subprocess.DEVNULL, run_err, env=env)
        deadline = time.monotonic() + 60
        while not any(r.get("event") == "ready" for r in read_trace(trace)):
            if service.poll() is not None:
                raise RuntimeError(f"hubctl run exited {service.returncode}: see {work / 'run.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("hubctl run not ready within 60 s")
            time.sleep(0.2)
        for _ in range(args.browsers):
            browsers.append(EventClient(port, token, stopping))
            browsers[-1].start()
        time.sleep(args.warmup)
        t0, cpu0, sim0 = time.time(), cpu_s(service.pid), cpu_s(sim.pid)
        m0 = time.monotonic()
        time.sleep(args.seconds)
        t1, cpu1, sim1 = time.time(), cpu_s(service.pid), cpu_s(sim.pid)
        window = time.monotonic() - m0
        memory = memory_mb(service.pid)
        if service.poll() is not None:
            raise RuntimeError(f"hubctl run exited {service.returncode} during the window")
        cycles = [r for r in read_trace(trace) if r["kind"] == "cycle" and t0 <= r["ts_utc"] < t1]
        if not cycles:
            raise RuntimeError("no cycles in the window")
        return Figures(
            companies=args.companies,
            devices=devices,
            window_s=window,
            cycles=cycles,
            service_cpu_pct=100 * (cpu1 - cpu0) / window,
            sim_cpu_pct=100 * (sim1 - sim0) / window,
            memory=memory,
            browsers=browsers,
        )
    finally:
        stopping.set()
        for b in browsers:
            b.join(timeout=5)
        if service is not None:
            code = stop(service)
            if code != 0:
                print(f"hubctl run exited {code}; see {work / 'run.log'}", file=sys.stderr)
        stop(sim)
        sim_err.close()
        run_err.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--companies", type=int, default=50)
    parser.add_argument("--pv-units", type=int, default=2, help="PV inverters per company (default 2)")
    parser.add_argument("--seconds", type=float, default=90.0, help="measured window, real seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="real seconds after ready, not measured")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--browsers", type=int, default=5, help="clients on the park page's event stream (0: the page off)"
    )
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept: scenario, config, trace, logs)")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 300:
        parser.error("--seconds must be 1..600 and --warmup 0..300")
    if not 0 <= args.browsers <= 100:
        parser.error("--browsers must be 0..100")
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        print(bench(args, work).report())
    else:
        with tempfile.TemporaryDirectory(prefix="hubctl-bench-") as tmp:
            print(bench(args, Path(tmp)).report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
