"""The spool on its own: durability across reopen, acknowledgement, bounds and drop policies, keys, export."""

from __future__ import annotations

import csv
import io
import sqlite3
from typing import TYPE_CHECKING

import pytest

from hubctl.cli.main import main as cli_main
from hubctl.data.points import Point, allocation_point, parse_line
from hubctl.data.spool import DropPolicy, Spool, SpoolBounds, export_lines

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_795_000_000.0  # 2026-11-18, UTC


def pts(n: int, start: int = 0, site: str = "p") -> list[Point]:
    return [
        Point("company", {"site": site, "company": "c"}, {"seq": float(i)}, round(T0 * 1000) + i)
        for i in range(start, start + n)
    ]


def seqs(lines: list[str]) -> list[int]:
    return [int(parse_line(x).fields["seq"]) for x in lines]


def test_append_is_durable_only_after_commit_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path, clock=lambda: T0)
    s.append(pts(5))
    assert s.queued_points == 5
    assert s.pending_points == 0
    assert s.commit() == 5
    s.append(pts(3, 5))
    s.close()  # commits the queue
    s = Spool(path, clock=lambda: T0)
    assert s.pending_points == 8
    assert seqs(s.peek(100).lines) == list(range(8))
    assert s.stats().counters["appended"] == 8
    s.close()


def test_ack_deletes_exactly_the_batch(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.sqlite", chunk_points=4, clock=lambda: T0)
    s.append(pts(10))
    s.commit()
    batch = s.peek(5)  # whole chunks: 4 lines, a second chunk would pass 5
    assert seqs(batch.lines) == [0, 1, 2, 3]
    s.append(pts(2, 10))
    s.commit()
    s.ack(batch)
    assert seqs(s.peek(100).lines) == list(range(4, 12))
    assert s.stats().counters["delivered"] == 4
    s.close()


def test_chunk_ids_are_never_reused(tmp_path: Path) -> None:
    """An emptied table must not hand out an acknowledged batch's ids again (AUTOINCREMENT)."""
    s = Spool(tmp_path / "spool.sqlite", clock=lambda: T0)
    s.append(pts(3))
    s.commit()
    old = s.peek(10)
    s.ack(old)
    s.append(pts(3, 3))
    s.commit()
    s.ack(old)  # a late, repeated acknowledgement
    assert seqs(s.peek(10).lines) == [3, 4, 5]
    s.close()


@pytest.mark.parametrize(
    ("policy", "kept"), [(DropPolicy.OLDEST, range(70, 100)), (DropPolicy.NEWEST, range(30))]
)
def test_point_bound_holds_and_drops_are_counted(tmp_path: Path, policy: DropPolicy, kept: range) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path, SpoolBounds(max_points=30, policy=policy), chunk_points=10, clock=lambda: T0)
    for i in range(10):
        s.append(pts(10, 10 * i))
        s.commit()
        assert s.pending_points <= 30
    assert seqs(s.peek(1000).lines) == list(kept)
    assert s.stats().counters["dropped_size"] == 70
    s.close()
    s = Spool(path, SpoolBounds(max_points=30, policy=policy), clock=lambda: T0)
    assert s.stats().dropped == 70  # the count survives a restart
    s.close()


def test_readers_never_see_the_totals_inside_a_commit(tmp_path: Path) -> None:
    """The forwarder and the status page read the totals while a commit runs in a worker thread.

    Between the insert and the drop that brings the spool back within its bounds the working
    count is above the bound; a reader on another thread must see the last finished transaction.
    """
    seen: list[tuple[int, int]] = []

    class Watched(Spool):
        def _enforce_bounds(self, now_ms: int, drops: dict[str, int]) -> None:
            seen.append((self.pending_points, self.stats().pending_points))
            super()._enforce_bounds(now_ms, drops)

    s = Watched(tmp_path / "spool.sqlite", SpoolBounds(max_points=30), chunk_points=10, clock=lambda: T0)
    for i in range(6):
        s.append(pts(10, 10 * i))
        s.commit()
    assert len(seen) == 6
    assert max(max(pair) for pair in seen) == 30  # full, never 40
    assert s.pending_points == 30
    s.close()


def test_byte_bound_holds(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_bytes=20_000), chunk_points=100, clock=lambda: T0)
    for i in range(200):
        s.append(pts(100, 100 * i))
        s.commit()
        assert s.stored_bytes <= 20_000
    on_disk = sqlite3.connect(s.path).execute("SELECT sum(size) FROM chunks").fetchone()[0]
    assert on_disk == s.stored_bytes
    stats = s.stats()
    assert stats.counters["dropped_size"] + stats.pending_points == 20_000
    s.close()


def test_old_points_are_dropped_by_age(tmp_path: Path) -> None:
    now = [T0]
    s = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_age_s=3600), clock=lambda: now[0])
    s.append(pts(10))
    s.commit()
    now[0] = T0 + 3600.5
    s.append([Point("company", {"site": "p"}, {"seq": 99.0}, round(now[0] * 1000))])
    s.commit()
    assert s.stats().counters["dropped_age"] == 10
    assert seqs(s.peek(100).lines) == [99]
    s.close()


def test_queue_is_bounded_when_the_disk_stalls(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.sqlite", max_queue_points=50, clock=lambda: T0)
    for i in range(10):
        s.append(pts(10, 10 * i))  # no commit: the disk is "stuck"
    assert s.queued_points == 50
    assert s.stats().counters["dropped_queue"] == 50
    s.commit()
    assert seqs(s.peek(100).lines) == list(range(50, 100))
    s.close()


def test_keyed_points_are_appended_once(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    row = allocation_point("p", "bakery", T0, 1.0, 0.0, 0.5, 0.0, 900.0)
    s = Spool(path, clock=lambda: T0)
    s.append([row, row])
    s.commit()
    s.append([row])
    s.commit()
    assert s.pending_points == 1
    s.ack(s.peek(10))
    s.append([row])  # delivered already: a ledger re-append after a crash must not send it twice
    s.commit()
    assert s.pending_points == 0
    s.close()
    s = Spool(path, clock=lambda: T0)
    s.append([row])
    s.commit()
    assert s.pending_points == 0
    s.close()


def test_export_by_time_and_read_only_while_open(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path, chunk_points=7, clock=lambda: T0)
    s.append(pts(50))
    s.commit()
    lo, hi = round(T0 * 1000) + 10, round(T0 * 1000) + 20
    assert seqs(list(s.export(lo, hi))) == list(range(10, 20))
    assert seqs(list(export_lines(path, lo, hi))) == list(range(10, 20))  # another reader, gateway still open
    s.close()


def test_cli_export_lp_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spool.sqlite"
    s = Spool(path, clock=lambda: T0)
    s.append(
        [
            *pts(3),
            Point(
                "limit",
                {"site": "p", "import_source": "window 16:00-20:00"},
                {"import_limit_kw": 600.0},
                round(T0 * 1000),
            ),
        ]
    )
    s.close()
    assert cli_main(["export", "--spool", str(path), "--from", "2026-11-18", "--to", "2026-11-18"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert out[0].startswith("company,company=c,site=p seq=0.0 ")
    assert cli_main(["export", "--spool", str(path), "--to", "2026-11-17"]) == 0
    assert capsys.readouterr().out == ""
    dest = tmp_path / "out.csv"
    assert cli_main(["export", "--spool", str(path), "--format", "csv", "--out", str(dest)]) == 0
    rows = list(csv.DictReader(io.StringIO(dest.read_text())))
    assert [r["value"] for r in rows if r["measurement"] == "company"] == ["0.0", "1.0", "2.0"]
    lim = next(r for r in rows if r["measurement"] == "limit")
    assert lim["tags"] == "import_source=window 16:00-20:00"
    assert lim["time_utc"] == "2026-11-18T11:06:40.000+00:00"
    assert cli_main(["export", "--spool", str(tmp_path / "missing.sqlite")]) == 1
