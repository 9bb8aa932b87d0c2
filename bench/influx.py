"""Benchmark: points per second through spool and writer into a real VictoriaMetrics; spool growth per day.

    .venv/bin/python bench/influx.py [--points 300000] [--hours 1]

1. Throughput: a 50-company park's points (the mix below) are appended in
   cycles as fast as the producer can, while the spool's commit task and the
   forwarder drain them into VictoriaMetrics (started here on a free loopback
   port, Debian package ``victoria-metrics``). Reported: points per second
   from the first append until every point is acknowledged and
   ``/internal/force_flush`` returned, and the cost of ``Spool.append`` per
   point (what the control loop pays).
2. Growth: ``--hours`` of the same park at a 1 s cycle go into a spool with no
   forwarder (the local store, or an outage); the stored bytes and the file
   size are scaled to a day.

The mix per 1 s cycle (202 points, 612 fields): 1 park reading (5 fields), 50
company readings (6), 50 setpoints (2), 1 park limit (2), 100 device readings
(power and energy); every 15 min 50 allocation rows and 1 park quarter.
Values follow random walks rounded as meters report them (W, 0.1 % SoC).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from hubctl.data.influx import Forwarder, InfluxWriter
from hubctl.data.points import (
    Point,
    allocation_point,
    company_point,
    device_point,
    limit_point,
    park_point,
    quarter_point,
    setpoint_point,
)
from hubctl.data.spool import Spool, SpoolBounds

SITE = "bench-park"
COMPANIES = [f"company-{i:02d}" for i in range(50)]
DEVICES = [(COMPANIES[i % 50], f"meter-{i:03d}") for i in range(100)]


class Park:
    """Random walks for the readings of a 50-company park."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.grid = self.rng.normal(50, 80, 50)
        self.pv = np.abs(self.rng.normal(60, 40, 50))
        self.soc = self.rng.uniform(20, 80, 50)
        self.energy = self.rng.uniform(1e4, 1e6, 100)

    def cycle(self, ts: float) -> list[Point]:
        self.grid += self.rng.normal(0, 2, 50)
        self.pv = np.abs(self.pv + self.rng.normal(0, 1, 50))
        self.soc = np.clip(self.soc + self.rng.normal(0, 0.01, 50), 5, 95)
        g, pv, soc = np.round(self.grid, 3), np.round(self.pv, 3), np.round(self.soc, 1)
        bat = np.round(self.grid * 0.1, 3)
        out: list[Point | None] = [
            park_point(SITE, ts, grid_kw=float(g.sum()), load_kw=float((g + pv).sum()), pv_kw=float(pv.sum()),
                       pv_available_kw=float(pv.sum()), battery_kw=float(bat.sum())),
            limit_point(SITE, None, ts, 900.0, "contract", 500.0, "contract"),
        ]  # fmt: skip
        for i, cid in enumerate(COMPANIES):
            gi, pvi = float(g[i]), float(pv[i])
            out.append(
                company_point(SITE, cid, ts, grid_kw=gi, load_kw=gi + pvi, pv_kw=pvi, pv_available_kw=pvi,
                              battery_kw=float(bat[i]), soc_pct=float(soc[i]))
            )  # fmt: skip
            out.append(setpoint_point(SITE, cid, ts, float(bat[i]), float(pv[i])))
        self.energy += np.abs(self.grid[np.arange(100) % 50]) / 3600
        for j, (cid, dev) in enumerate(DEVICES):
            out.append(
                device_point(
                    SITE, cid, dev, ts, power_kw=float(g[j % 50]), energy_kwh=round(float(self.energy[j]), 3)
                )
            )
        if ts % 900 == 0:
            out += [allocation_point(SITE, cid, ts - 900, 5.0, 1.0, 0.5, 0.25, 900.0) for cid in COMPANIES]
            out.append(
                quarter_point(SITE, ts - 900, grid_kw=400.0, import_limit_kw=900.0, import_source="contract")
            )
        return [p for p in out if p is not None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_vm(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("victoria-metrics not installed: apt-get install victoria-metrics")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}", "-search.latencyOffset=1s",
         "-retentionPeriod=100y", "-loggerLevel=ERROR"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    sys.exit("victoria-metrics did not start")


async def throughput(tmp: Path, total_points: int) -> dict[str, float]:
    proc, url = _start_vm(tmp / "vm")
    try:
        park = Park()
        t0_data = time.time() - 86400  # yesterday: nothing is in the future or past retention
        cycles = []
        n = 0
        k = 0
        while n < total_points:
            pts = park.cycle(t0_data + k)
            cycles.append(pts)
            n += len(pts)
            k += 1
        spool = Spool(tmp / "spool.sqlite", SpoolBounds(max_bytes=4 << 30), commit_every_s=0.25)
        writer = InfluxWriter(url, "hubctl")
        forwarder = Forwarder(spool, writer, batch_points=5000, idle_s=0.05)
        tasks = [asyncio.create_task(spool.run()), asyncio.create_task(forwarder.run())]
        start = time.perf_counter()
        append_s = 0.0
        for pts in cycles:
            a = time.perf_counter()
            spool.append(pts)
            append_s += time.perf_counter() - a
            await asyncio.sleep(0)
        while spool.pending_points or spool.queued_points:  # noqa: ASYNC110 - polling a counter of another thread
            await asyncio.sleep(0.02)
        await asyncio.to_thread(urllib.request.urlopen, f"{url}/internal/force_flush")
        elapsed = time.perf_counter() - start
        await forwarder.stop()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        delivered = spool.stats().counters["delivered"]
        spool.close()
        writer.close()
        return {"points": delivered, "seconds": elapsed, "append_us_per_point": append_s / n * 1e6}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def growth(tmp: Path, hours: float) -> dict[str, float]:
    park = Park(2)
    spool = Spool(tmp / "store.sqlite", SpoolBounds(max_bytes=8 << 30, max_age_s=None))
    t0 = 1_795_000_500.0 - 1_795_000_500.0 % 900
    points = 0
    for k in range(round(hours * 3600)):
        pts = park.cycle(t0 + k)
        points += len(pts)
        spool.append(pts)
        if k % 4 == 3:
            spool.commit()
    spool.close()
    db = sqlite3_file_size(tmp / "store.sqlite")
    stored = Spool(tmp / "store.sqlite", SpoolBounds(max_bytes=8 << 30, max_age_s=None))
    stored_bytes = stored.stored_bytes
    stored.close()
    scale = 24 / hours
    return {
        "points_per_day": points * scale,
        "stored_mb_per_day": stored_bytes * scale / 1e6,
        "file_mb_per_day": db * scale / 1e6,
        "bytes_per_point": db / points,
    }


def sqlite3_file_size(path: Path) -> int:
    import sqlite3  # noqa: PLC0415

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--hours", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = asyncio.run(throughput(tmp, args.points))
        g = growth(tmp, args.hours)
    print(
        f"throughput: {t['points']:,.0f} points through spool and writer into VictoriaMetrics in "
        f"{t['seconds']:.1f} s = {t['points'] / t['seconds']:,.0f} points/s "
        f"({t['points'] / t['seconds'] / 202:.0f}x a 50-company park at a 1 s cycle); "
        f"Spool.append {t['append_us_per_point']:.1f} us per point"
    )
    print(
        f"spool growth, 50 companies at 1 s ({g['points_per_day']:,.0f} points/day): "
        f"{g['file_mb_per_day']:,.0f} MB/day on disk ({g['bytes_per_point']:.1f} bytes/point; "
        f"{g['stored_mb_per_day']:,.0f} MB/day of compressed chunks)"
    )


if __name__ == "__main__":
    main()
