"""The spool, the forwarder and the ledger against a full disk and damaged files (issue #13, items 1, 2, 12).

The full disk is a real one: a tmpfs of 4 MiB mounted for the test (this needs root, as the
Makefile's test run has here; elsewhere these tests skip, saying why), filled to the last byte
by a filler file and freed by deleting it. On a full disk SQLite fails the ``COMMIT`` with
``SQLITE_FULL`` and has rolled the transaction back itself, so the ``ROLLBACK`` of the error path
fails too: that was how a batch of points got lost, and how a failed acknowledgement after a 2xx
crashed the forwarder, which then sent the batch again.

The damaged files are real files made by the real code and then cut, overwritten or truncated
as a bad SD card or a power cut leaves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from test_influx import _assert_exactly_once, _load_points, _Services, needs_vm

from hubctl.config.site import SiteConfig, parse_config
from hubctl.core.quarters import ParkStep
from hubctl.data.influx import InfluxWriter
from hubctl.data.ledger import Ledger
from hubctl.data.points import Point, parse_line
from hubctl.data.spool import Spool, SpoolBounds
from hubctl.service.clock import Clock
from hubctl.service.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from test_influx import VictoriaMetrics

T0 = 1_795_000_000.0  # 2026-11-18, UTC
FULL_S = float(os.environ.get("HUBCTL_FULL_DISK_S", "35"))  # the 35 s


# --- a real small file system -------------------------------------------------------------------------------


class SmallDisk:
    """A tmpfs of `size_kib` KiB at `path`; `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, path: Path, size_kib: int = 4096) -> None:
        self.path = path
        self.size_kib = size_kib
        self._filler = path / f"filler-{uuid.uuid4().hex}"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_kib}k,mode=0700", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)

    def fill(self) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * block)
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self._filler.unlink()


def _can_mount() -> str | None:
    """None when a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    return None


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    reason = _can_mount()
    if reason is not None:
        pytest.skip(reason)
    d = SmallDisk(tmp_path / "disk")
    try:
        d.mount()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc.stderr.decode().strip()}")
    try:
        yield d
    finally:
        d.unmount()


def pts(n: int, start: int = 0, site: str = "p") -> list[Point]:
    return [
        Point("company", {"site": site, "company": "c"}, {"seq": float(i)}, round(T0 * 1000) + i)
        for i in range(start, start + n)
    ]


def seqs(lines: Sequence[str]) -> list[int]:
    return [int(parse_line(x).fields["seq"]) for x in lines]


# --- item 1: a full disk loses nothing ----------------------------------------------------------------------


def test_a_commit_on_a_full_disk_keeps_its_points_in_memory(
    disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    s = Spool(disk.path / "spool.sqlite", clock=lambda: T0, max_queue_points=250)
    s.append(pts(100))
    s.commit()
    disk.fill()
    for i in range(1, 4):  # three cycles' points on a full disk
        s.append(pts(100, 100 * i))
        with pytest.raises(sqlite3.OperationalError, match="full"):
            s.commit()
    assert s.queued_points == 250  # bounded: the oldest 50 of the 300 are gone, and counted
    assert s.stats().counters["dropped_queue"] == 50
    assert s.stats().write_failures == 3
    failures = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(failures) == 1  # once, not at every attempt
    disk.free()
    assert s.commit() == 250
    assert seqs(s.peek(10_000).lines) == [*range(100), *range(150, 400)]
    assert any("written again" in r.getMessage() for r in caplog.records)
    s.close()
    s = Spool(disk.path / "spool.sqlite", clock=lambda: T0)
    assert s.stats().counters["dropped_queue"] == 50  # the drop is in the file too
    assert s.pending_points == 350
    s.close()


def test_an_acknowledgement_the_disk_refuses_is_kept_and_the_batch_never_handed_out_again(
    disk: SmallDisk,
) -> None:
    s = Spool(disk.path / "spool.sqlite", chunk_points=50, clock=lambda: T0)
    s.append(pts(200))
    s.commit()
    batch = s.peek(100)
    assert seqs(batch.lines) == list(range(100))
    disk.fill()
    s.ack(batch)  # the server answered 2xx; the DELETE cannot be written: no exception
    assert s.stats().unsaved_acks == 100
    assert s.pending_points == 100
    assert seqs(s.peek(1000).lines) == list(range(100, 200))  # never sent again
    s.append(pts(10, 200))
    with pytest.raises(sqlite3.OperationalError):
        s.commit()
    assert seqs(s.peek(1000).lines) == list(range(100, 200))
    disk.free()
    s.commit()  # the acknowledgement goes with the next commit that succeeds
    assert s.stats().unsaved_acks == 0
    assert s.stats().counters["delivered"] == 100
    assert seqs(s.peek(1000).lines) == list(range(100, 210))
    s.close()
    s = Spool(disk.path / "spool.sqlite", clock=lambda: T0)
    assert seqs(s.peek(1000).lines) == list(range(100, 210))
    s.close()


class _FillsTheDiskAfterItsFirstWrite(InfluxWriter):
    """The real writer; right after the server's first 2xx the disk fills (the worst moment)."""

    def __init__(self, url: str, disk: SmallDisk) -> None:
        super().__init__(url, "hubctl", timeout_s=5)
        self.disk = disk
        self.filled = False

    def write(self, lines: Sequence[str]) -> None:
        super().write(lines)
        if not self.filled:
            self.filled = True
            self.disk.fill()


@needs_vm
def test_a_full_disk_for_35_s_loses_nothing_and_sends_nothing_twice(
    disk: SmallDisk, vm: VictoriaMetrics
) -> None:
    """A cycle's points every second; the disk is full for 35 s from the server's first answer on."""
    site = "full-disk-test"
    companies = 20
    base_ms = round((time.time() - 3600) * 1000)

    async def main() -> tuple[int, dict[str, int]]:
        vm.stop()  # a backlog first, so that the first answer acknowledges a batch
        spool = Spool(disk.path / "spool.sqlite")
        writer = _FillsTheDiskAfterItsFirstWrite(vm.url, disk)
        svc = _Services(spool, writer)
        svc.start()
        cycle = 0

        async def cycles(seconds: float) -> None:
            nonlocal cycle
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                spool.append(_load_points(site, base_ms, cycle, companies))
                cycle += 1
                await asyncio.sleep(1.0)

        await cycles(3)
        assert spool.pending_points > 0
        await asyncio.to_thread(vm.start)
        full_from = time.monotonic()
        while not writer.filled:
            await cycles(1)
        await cycles(FULL_S - (time.monotonic() - full_from))
        seen = spool.stats()
        assert seen.write_failures > 0  # the disk refused commits ...
        assert seen.unsaved_acks > 0  # ... and the acknowledgement of the batch the server took
        assert seen.queued_points > 0  # the points since are in memory
        assert not any(t.done() for t in svc.tasks)  # neither the spool's task nor the forwarder ended
        disk.free()
        await cycles(2)
        deadline = time.monotonic() + 30
        while spool.pending_points or spool.queued_points or spool.stats().unsaved_acks:
            assert time.monotonic() < deadline, spool.stats()
            await asyncio.sleep(0.05)
        await svc.stop()
        counters = spool.stats().counters
        spool.close()
        writer.close()
        return cycle, counters

    cycles, counters = asyncio.run(main())
    assert cycles >= FULL_S
    assert counters["appended"] == counters["delivered"] == cycles * companies
    assert counters.get("dropped_queue", 0) == 0
    _assert_exactly_once(vm, site, cycles, companies)  # all of them, once each


# --- item 2: damaged files ----------------------------------------------------------------------------------


def _make_spool(path: Path, chunks: int = 400, per: int = 50) -> None:
    s = Spool(path, chunk_points=per, clock=lambda: T0)
    for i in range(chunks):
        s.append(pts(per, per * i))
        s.commit()
    s.close()
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed: the file is all of it


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(b"\x5a" * 100 + data[100:])
    elif how == "tail":
        path.write_bytes(data[:-1000])
    else:
        raise AssertionError(how)


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*[0-9]Z"))


@pytest.mark.parametrize(("how", "readable"), [("half", True), ("header", False), ("tail", True)])
def test_a_damaged_spool_is_moved_aside_and_what_can_be_read_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, readable: bool
) -> None:
    path = tmp_path / "spool.sqlite"
    _make_spool(path)
    _damage(path, how)
    caplog.set_level(logging.INFO)
    s = Spool(path, clock=lambda: T0)
    assert s.salvage is not None
    (moved,) = _aside(path)
    assert s.salvage.moved_to == moved
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert "is damaged" in lines[0]
    assert moved.name in lines[0]
    kept = seqs(s.peek(100_000).lines)
    assert kept == sorted(set(kept))
    assert set(kept) <= set(range(20_000))
    if readable:
        assert len(kept) >= 4000, len(kept)  # the rows on the pages that are left
    else:
        assert kept == []
    assert s.pending_points == len(kept)
    if how == "tail":  # the torn last page: rows SQLite reads, with NULLs in them
        assert s.salvage.skipped_rows >= 1
        assert s.stats().counters["damaged_rows"] == s.salvage.skipped_rows
    s.append(pts(5, 50_000))  # and it records again
    s.commit()
    assert seqs(s.peek(100_000).lines)[-5:] == list(range(50_000, 50_005))
    s.close()
    s = Spool(path, clock=lambda: T0)  # the new file is sound: no second move
    assert s.salvage is None
    assert len(_aside(path)) == 1
    s.close()


@needs_vm
def test_a_damaged_row_is_skipped_and_counted_and_the_rest_is_delivered(
    tmp_path: Path, vm: VictoriaMetrics
) -> None:
    """Rows SQLite reads without complaint but cannot be used (data that is no zlib, a wrong count)."""
    site = "damaged-row-test"
    companies = 5
    base_ms = round((time.time() - 3600) * 1000)
    path = tmp_path / "spool.sqlite"
    s = Spool(path)
    for cycle in range(30):
        s.append(_load_points(site, base_ms, cycle, companies))
        s.commit()
    s.close()
    db = sqlite3.connect(path)
    ids = [r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")]
    db.execute("UPDATE chunks SET data = ? WHERE id = ?", (b"\x00not zlib", ids[3]))
    db.execute("UPDATE chunks SET points = 99 WHERE id = ?", (ids[7],))
    db.commit()
    db.close()

    async def main() -> dict[str, int]:
        spool = Spool(path)
        assert spool.salvage is None  # quick_check cannot see it: the rows are well-formed
        writer = InfluxWriter(vm.url, "hubctl", timeout_s=5)
        svc = _Services(spool, writer)
        svc.start()
        for cycle in range(30, 40):
            spool.append(_load_points(site, base_ms, cycle, companies))
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 20
        while spool.pending_points or spool.queued_points:
            assert time.monotonic() < deadline, spool.stats()
            assert not any(t.done() for t in svc.tasks)
            await asyncio.sleep(0.05)
        await svc.stop()
        counters = spool.stats().counters
        spool.close()
        writer.close()
        return counters

    counters = asyncio.run(main())
    assert counters["damaged_rows"] == 2
    got = vm.export(f'{{site="{site}"}}')
    cycles = sorted({int(v) for samples in got.values() for _, v in samples})
    assert cycles == [c for c in range(40) if c not in (3, 7)]
    assert Spool(path).pending_points == 0  # the damaged rows are gone from the file


def _site() -> SiteConfig:
    return parse_config(
        {
            "site": {"id": "faults"},
            "park": {"import_limit_kw": 100, "export_limit_kw": 50},
            "companies": [{"id": "a"}, {"id": "b"}],
            "sharing": {"key": "pro_rata", "interval_s": 900},
        }
    )


def _make_ledger(path: Path, cfg: SiteConfig, spool: Spool | None = None) -> None:
    ledger = Ledger.from_config(path, cfg, spool=spool)
    t = T0 - T0 % 900
    for q in range(12):  # three hours of quarters: rows over several pages
        for k in range(90):
            ledger.add_step(t + q * 900 + k * 10, [5.0, -3.0], 10.0)
    ledger.close_due(t + 12 * 900)
    ledger.close()


def test_a_damaged_ledger_with_an_intact_spool_each_opens_on_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _site()
    spool_path, ledger_path = tmp_path / "spool.sqlite", tmp_path / "ledger.sqlite"
    spool = Spool(spool_path, clock=lambda: T0)
    _make_ledger(ledger_path, cfg, spool)
    spooled = spool.pending_points
    assert spooled > 0
    spool.close()
    _damage(ledger_path, "header")
    storage = Storage.open(cfg, tmp_path, None, Clock())
    assert storage is not None
    assert storage.spool.salvage is None
    assert storage.spool.pending_points == spooled  # the spool as it was
    assert storage.ledger is not None
    assert storage.ledger.salvage is not None
    assert len(_aside(ledger_path)) == 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR and "ledger" in r.getMessage()]
    t = T0 - T0 % 900 + 20 * 900
    storage.ledger.add_step(t, [1.0, 1.0], 900.0)  # and it settles again
    assert storage.ledger.close_due(t + 900)
    storage.close()


def test_a_ledger_cut_in_half_keeps_its_readable_rows(tmp_path: Path) -> None:
    cfg = _site()
    path = tmp_path / "ledger.sqlite"
    _make_ledger(path, cfg)
    db = sqlite3.connect(path)
    before = db.execute("SELECT count(*) FROM allocations").fetchone()[0]
    db.close()
    _damage(path, "half")
    ledger = Ledger.from_config(path, cfg)
    assert ledger.salvage is not None
    rows = ledger.rows()
    assert 0 < len(rows) <= before
    assert all(r.interval_s == 900.0 and r.covered_s == 900.0 for r in rows)
    ledger.close()


def test_an_unreadable_open_interval_is_dropped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _site()
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.from_config(path, cfg)
    ledger.add_step(T0, [1.0, 2.0], 10.0)
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE open_state SET state = ?", ('{"last_end": "soon"',))
    db.commit()
    db.close()
    ledger = Ledger.from_config(path, cfg)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    ledger.add_step(T0 + 10, [1.0, 2.0], 10.0)
    ledger.close()


# --- item 12: the spool-bound drop warnings -----------------------------------------------------------------


def test_drop_warnings_once_then_once_a_minute_then_once_when_it_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At its bound, the spool drops at each commit that brings points (every 1 s) and not at the
    empty commits between (every 0.25 s): that made the warnings flip twice a second."""
    mono = [0.0]
    s = Spool(
        tmp_path / "spool.sqlite",
        SpoolBounds(max_points=100),
        chunk_points=10,
        clock=lambda: T0,
        monotonic=lambda: mono[0],
    )
    s.append(pts(100))
    s.commit()
    caplog.set_level(logging.INFO, logger="hubctl.spool")
    seq = 100
    for tick in range(4 * 150):  # 150 s of commits every 0.25 s, a cycle's 10 points every second
        mono[0] = tick * 0.25
        if tick % 4 == 0:
            s.append(pts(10, seq))
            seq += 10
        s.commit()
    for tick in range(4 * 150, 4 * 230):  # the outage is over: nothing is dropped for 80 s
        mono[0] = tick * 0.25
        s.commit()
    messages = [r.getMessage() for r in caplog.records if r.name == "hubctl.spool"]
    assert len(messages) == 4, messages
    assert "dropping points" in messages[0]
    assert messages[1].startswith("spool still dropping: 610 points")  # at 60 s
    assert messages[2].startswith("spool still dropping: 1210 points")  # at 120 s
    assert "no longer dropping after 149 s; 1500 points dropped" in messages[3]
    assert s.stats().counters["dropped_size"] == 1500
    s.close()


# --- the ledger on a full disk ------------------------------------------------------------------------------


def test_a_full_disk_at_a_settlement_loses_no_quarter_of_the_ledger(
    disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fills during the quarter 1: its settlement is refused (the COMMIT fails, and SQLite
    rolled back by itself), so it is kept in memory while the next quarter goes on being measured,
    and written, once, when the disk takes it again; nothing is counted twice."""
    caplog.set_level(logging.INFO)
    cfg = parse_config({"park": {"import_limit_kw": 100}, "companies": [{"id": "a"}, {"id": "b"}]})
    ledger = Ledger.from_config(disk.path / "ledger.sqlite", cfg)
    q0 = T0 - T0 % 900
    step = ParkStep(import_limit_kw=100.0, import_source="contract")
    for k in range(900):
        ledger.add_step(q0 + k, [30.0, 20.0], 1.0, step)
    disk.fill()
    for k in range(900, 1200):  # the quarter 0 settles here: refused, kept
        with contextlib.suppress(sqlite3.OperationalError):  # the open state's save is refused too
            ledger.add_step(q0 + k, [30.0, 20.0], 1.0, step)
    assert ledger.unwritten >= 2  # the quarter and the allocation interval
    disk.free()
    for k in range(1200, 1801):
        ledger.add_step(q0 + k, [30.0, 20.0], 1.0, step)
    assert ledger.unwritten == 0
    quarters = {q.start_utc: q for q in ledger.quarters()}
    assert sorted(quarters) == [q0, q0 + 900]
    for start in (q0, q0 + 900):
        assert quarters[start].covered_s == pytest.approx(900.0)  # nothing lost, nothing twice
        assert quarters[start].import_kwh == pytest.approx(50.0 / 4)
    rows = ledger.rows()
    assert sorted((r.start_utc, r.company) for r in rows) == [
        (q0, "a"), (q0, "b"), (q0 + 900, "a"), (q0 + 900, "b")
    ]  # fmt: skip
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hubctl")]
    assert sum("the disk refused a settlement" in m for m in messages) == 1
    assert any("takes the settlements again" in m for m in messages)
    ledger.close()
