"""The load history on disk: round trip, incremental and bounded saves, companies by id, damaged files."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from test_history_import import CONFIG, contract_csv, local, site_params

from hubctl.config.site import parse_config
from hubctl.core.history import SLOTS, DayType, History
from hubctl.core.types import Params
from hubctl.data.history_contract import parse_contract
from hubctl.data.history_store import (
    FILE_NAME,
    SCHEMA_VERSION,
    HistoryStore,
    day_slots,
    read_history,
    summarize,
)
from hubctl.errors import HistoryStoreError

if TYPE_CHECKING:
    from pathlib import Path

PARAMS = site_params()
T0 = local("2026-03-31T00:00")


def imported_history(params: Params = PARAMS, start: str = "2026-03-27T00:00", t0: float = T0) -> History:
    """Four days from a contract file (across the spring DST day), with peaks on one slot."""
    records = parse_contract(contract_csv(local(start), t0), t0, params).records
    history = params.empty_history().with_records(records)
    return history.with_slots([(dt.date(2026, 3, 30), 40, [1.0, 2.0, 3.0], [0.5, 0.0, 0.25], 7.5)])


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT date, day_type, companies, dtype, slots, columns, saved_utc FROM days"
        ).fetchall()


class Clock:
    def __init__(self, t: float = 1.8e9) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_history_round_trips(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    history = imported_history()
    store = HistoryStore(path, PARAMS)
    assert store.load().days == {}
    assert store.save(history) == 4
    store.close()
    store = HistoryStore(path, PARAMS)
    loaded = store.load()
    assert store.save(loaded) == 0  # nothing changed since the load
    store.close()
    assert loaded.companies == history.companies
    assert sorted(loaded.days) == sorted(history.days)
    for date, rec in history.days.items():
        got = loaded.days[date]
        assert got.day_type is rec.day_type
        np.testing.assert_allclose(got.load_kw, rec.load_kw, rtol=1e-6, equal_nan=True)  # float32 on disk
        np.testing.assert_allclose(got.pv_kw, rec.pv_kw, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(got.peak_kw, rec.peak_kw, rtol=1e-6, equal_nan=True)
    assert loaded.days[dt.date(2026, 3, 30)].peak_kw[40] == 7.5
    assert loaded.days[dt.date(2026, 3, 29)].slots_measured == 92
    assert loaded.days_by_type() == history.days_by_type()
    # the profiles are rebuilt from what was loaded
    assert loaded.profiles[DayType.WORKING].known
    assert loaded.revision > 0


def test_arrays_are_little_endian_float32_blobs_with_their_shape(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    store = HistoryStore(path, PARAMS)
    store.save(imported_history())
    store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        dtype, slots, columns, companies, load, peak = db.execute(
            "SELECT dtype, slots, columns, companies, load, peak FROM days WHERE date = '2026-03-30'"
        ).fetchone()
    assert version == SCHEMA_VERSION
    assert mode == "wal"
    assert (dtype, slots, columns, companies) == ("<f4", SLOTS, 3, '["bakery", "cold", "works"]')
    assert len(load) == SLOTS * 3 * 4
    expected = imported_history().days[dt.date(2026, 3, 30)]
    assert np.array_equal(np.frombuffer(load, "<f4").reshape(SLOTS, 3), expected.load_kw.astype("<f4"))
    assert np.frombuffer(peak, "<f4")[40] == 7.5


def test_a_save_writes_only_the_days_that_changed(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    clock = Clock()
    store = HistoryStore(path, PARAMS, clock=clock)
    history = imported_history()
    store.save(history)
    clock.t += 900
    # a quarter-hour completes: one day changes
    history = history.with_slots([(dt.date(2026, 3, 30), 41, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 3.0)])
    assert store.save(history) == 1
    saved = {r[0]: r[-1] for r in rows(path)}
    assert saved == {"2026-03-27": 1.8e9, "2026-03-28": 1.8e9, "2026-03-29": 1.8e9, "2026-03-30": 1.8e9 + 900}
    assert store.save(history) == 0
    # a new day
    clock.t += 900
    history = history.with_slots([(dt.date(2026, 3, 31), 0, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], None)])
    assert store.save(history) == 1
    store.close()
    assert len(rows(path)) == 5
    reloaded, _ = read_history(path, PARAMS)
    expected = history.days[dt.date(2026, 3, 30)].load_kw[41]
    assert reloaded.days[dt.date(2026, 3, 30)].load_kw[41].tolist() == pytest.approx(expected.tolist())
    assert reloaded.days[dt.date(2026, 3, 31)].load_kw[0].tolist() == [1.0, 1.0, 1.0]


def test_never_more_than_history_max_days_on_disk(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    long = site_params(history_max_days=30)
    store = HistoryStore(path, long)
    store.save(imported_history(long, "2026-03-17T00:00"))  # 14 days
    store.close()
    assert len(rows(path)) == 14
    short = site_params(history_max_days=7)
    store = HistoryStore(path, short)
    loaded = store.load()
    assert len(loaded.days) == 7
    assert min(loaded.days) == dt.date(2026, 3, 24)  # the newest are kept
    assert len(rows(path)) == 7  # and the file is bounded at once
    # the History drops its oldest day as a new one comes: the file follows
    more = loaded.with_slots([(dt.date(2026, 3, 31), 0, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], None)])
    assert store.save(more) == 1
    store.close()
    assert sorted(r[0] for r in rows(path)) == [f"2026-03-{d}" for d in range(25, 32)]


def test_an_import_is_bounded_too(tmp_path: Path) -> None:
    short = site_params(history_max_days=7)
    records = parse_contract(contract_csv(local("2026-03-17T00:00"), T0), T0, short).records
    store = HistoryStore(tmp_path / FILE_NAME, short)
    history, met = store.merge(records)
    store.close()
    assert met == 0
    assert len(history.days) == 7
    assert len(rows(tmp_path / FILE_NAME)) == 7


def test_companies_are_mapped_by_id(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    store = HistoryStore(path, PARAMS)
    store.save(imported_history())
    store.close()
    data = {**CONFIG, "companies": [CONFIG["companies"][2], {"id": "newco"}, CONFIG["companies"][0]]}
    other = Params.from_config(parse_config(data))
    store = HistoryStore(path, other)
    loaded = store.load()
    store.close()
    assert loaded.companies == ("works", "newco", "bakery")
    original = imported_history().days[dt.date(2026, 3, 30)]
    rec = loaded.days[dt.date(2026, 3, 30)]
    assert rec.load_kw.shape == (SLOTS, 3)
    np.testing.assert_allclose(rec.load_kw[:, 0], original.load_kw[:, 2], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(rec.load_kw[:, 2], original.load_kw[:, 0], rtol=1e-6, equal_nan=True)
    assert np.isnan(rec.load_kw[:, 1]).all()  # a company new in the config: unmeasured
    _, stale = read_history(path, other)
    assert stale == ("cold",)  # the removed company is still on disk, not loaded


def test_merge_keeps_stored_values_where_the_file_has_none(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / FILE_NAME, PARAMS)
    own = PARAMS.empty_history().with_slots(
        [
            (dt.date(2026, 3, 30), 0, [9.0, 9.0, 9.0], [1.0, 0.0, 1.0], 30.0),
            (dt.date(2026, 3, 30), 95, [8.0, 8.0, 8.0], [0.0, 0.0, 0.0], 25.0),
        ]
    )
    store.save(own)
    # the file covers 2026-03-30 00:00 to 12:00 only
    t0 = local("2026-03-30T12:00")
    records = parse_contract(contract_csv(local("2026-03-30T00:00"), t0), t0, PARAMS).records
    history, met = store.merge(records)
    store.close()
    assert met == 1
    rec = history.days[dt.date(2026, 3, 30)]
    assert rec.load_kw[0].tolist() == records[0].load_kw[0].tolist()  # the file wins
    assert rec.load_kw[95].tolist() == [8.0, 8.0, 8.0]  # the gateway's own reading stays
    assert rec.peak_kw[0] == 30.0  # peaks only come from the gateway
    assert rec.slots_measured == 48 + 1


def _damaged_cases(path: Path) -> dict[str, Any]:
    def garbage() -> None:
        path.write_bytes(b"this is not a database\n" * 100)

    def truncated() -> None:
        store = HistoryStore(path, PARAMS)
        store.save(imported_history())
        store.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def newer_schema() -> None:
        store = HistoryStore(path, PARAMS)
        store.close()
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA user_version = 99")

    def bad_blob() -> None:
        store = HistoryStore(path, PARAMS)
        store.save(imported_history())
        store.close()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE days SET load = x'00' WHERE date = '2026-03-28'")

    def someone_elses() -> None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE points (x)")

    return {
        "garbage": garbage,
        "truncated": truncated,
        "newer schema": newer_schema,
        "bad blob": bad_blob,
        "another database": someone_elses,
    }


@pytest.mark.parametrize("case", ["garbage", "truncated", "newer schema", "bad blob", "another database"])
def test_a_damaged_file_is_moved_aside_and_the_store_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    path = tmp_path / FILE_NAME
    _damaged_cases(path)[case]()
    before = path.read_bytes()
    with pytest.raises(HistoryStoreError):
        read_history(path, PARAMS)  # `show` says so and moves nothing
    assert path.read_bytes() == before
    with caplog.at_level(logging.WARNING, logger="hubctl.history_store"):
        store = HistoryStore(path, PARAMS, clock=Clock(1.8e9))
        history = store.load()
        assert history.days == {}
        assert store.moved_to is not None
        assert store.moved_to.name == "history.sqlite.damaged-20270115T080000Z"
        assert store.moved_to.read_bytes() == before  # kept, for whoever wants to look
        # the new file works
        assert store.save(imported_history()) == 4
        store.close()
    damaged = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1, caplog.text
    assert "moved aside to history.sqlite.damaged-20270115T080000Z" in damaged[0].getMessage()
    loaded, _ = read_history(path, PARAMS)
    assert len(loaded.days) == 4


def test_a_damaged_files_write_ahead_log_moves_with_it(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"x" * 4096)
    (tmp_path / f"{FILE_NAME}-wal").write_bytes(b"y" * 100)
    store = HistoryStore(path, PARAMS, clock=Clock(1.8e9))
    store.close()
    assert (tmp_path / "history.sqlite.damaged-20270115T080000Z-wal").read_bytes() == b"y" * 100
    # twice in the same second: another name
    path.write_bytes(b"x" * 4096)
    store = HistoryStore(path, PARAMS, clock=Clock(1.8e9))
    store.close()
    assert store.moved_to is not None
    assert store.moved_to.name == "history.sqlite.damaged-20270115T080000Z-2"


def test_a_state_dir_that_cannot_be_used_is_an_error_not_damage(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be", encoding="utf-8")
    with pytest.raises(OSError, match="state"):
        HistoryStore(blocker / FILE_NAME, PARAMS)
    assert blocker.read_text(encoding="utf-8") == "a file where the directory should be"
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "nothing" / FILE_NAME, PARAMS)


# --- summaries ---------------------------------------------------------------------------------------------


def test_the_summary_counts_days_per_type_gaps_and_the_last_complete_day() -> None:
    history = imported_history()
    # 2026-04-01: bakery and cold for the whole morning, works only from 06:00; a day missing between
    history = history.with_slots(
        [
            (dt.date(2026, 4, 2), s, [1.0, 1.0, float("nan") if s < 24 else 1.0], [0.0] * 3, None)
            for s in range(60)
        ]
    )
    s = summarize(history)
    assert s.days == 5
    assert (s.first_date, s.last_date) == (dt.date(2026, 3, 27), dt.date(2026, 4, 2))
    assert s.last_complete == dt.date(2026, 3, 30)
    assert s.quarters == 4 * 96 - 4 + 36
    assert s.missing == 2 * 96 + 24  # 03-31 and 04-01 not stored; 04-02 before works' first value
    assert s.by_type == {DayType.WORKING: 2, DayType.SATURDAY: 1, DayType.SUNDAY: 1, DayType.HOLIDAY: 0}
    assert s.stored_by_type[DayType.WORKING] == 3
    assert s.company_by_type["bakery"][DayType.WORKING] == 3  # 60 slots: at least half
    assert s.company_by_type["works"][DayType.WORKING] == 2  # 36 slots: less than half
    assert s.as_dict()["days_by_type"] == {"working": 2, "saturday": 1, "sunday": 1, "holiday": 0}
    empty = summarize(PARAMS.empty_history())
    assert (empty.days, empty.quarters, empty.missing, empty.last_complete) == (0, 0, 0, None)


def test_day_slots_know_the_dst_days() -> None:
    tz = PARAMS.tz
    assert len(day_slots(dt.date(2026, 3, 29), tz)) == 92
    assert 8 not in day_slots(dt.date(2026, 3, 29), tz)
    assert len(day_slots(dt.date(2026, 10, 25), tz)) == 96
    assert len(day_slots(dt.date(2026, 6, 22), tz)) == 96
