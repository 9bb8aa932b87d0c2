"""The gateway's side of the load history: loaded at start, saved per quarter-hour, a failing save logged
once and retried, a damaged file moved aside, memory only without a state directory."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from test_history_import import CONFIG, contract_csv, local

from hubctl.config.site import parse_config
from hubctl.core.types import Params
from hubctl.data.history_contract import parse_contract
from hubctl.data.history_store import FILE_NAME, HistoryStore, read_history
from hubctl.service.gateway import Gateway
from hubctl.service.options import Options

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

T0 = local("2026-03-31T00:00")


def gateway(state: Path | None) -> Gateway:
    data: dict[str, Any] = {**CONFIG}
    if state is not None:
        data["storage"] = {"dir": str(state)}
    return Gateway(parse_config(data), Options(env={}))


def complete_a_quarter(gw: Gateway, date: dt.date, slot: int) -> None:
    """What `step` does when a quarter-hour completes: the state's history gets one slot more."""
    history = gw.state.history.with_slots([(date, slot, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], 6.0)])
    gw.controller.state = replace(gw.state, history=history)


def test_the_stored_history_is_the_controllers_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    params = Params.from_config(parse_config(CONFIG))
    store = HistoryStore(state / FILE_NAME, params)
    store.merge(parse_contract(contract_csv(local("2026-03-27T00:00"), T0), T0, params).records)
    store.close()
    gw = gateway(state)
    with caplog.at_level(logging.INFO, logger="hubctl.service"):
        gw._open_history()
    assert sorted(gw.state.history.days) == [dt.date(2026, 3, d) for d in (27, 28, 29, 30)]
    assert gw.state.history.profiles  # the controller's own History, profiles built
    assert (
        f"load history: 4 day(s) loaded from {state / FILE_NAME}, 2026-03-27 to 2026-03-30, 380 "
        "quarter-hours; days with at least half of them: working 2, saturday 1, sunday 1, holiday 0"
        in caplog.text
    )
    doc = gw._history_summary()
    assert doc["days"] == 4
    assert doc["persisted"] is True
    assert doc["days_by_type"] == {"working": 2, "saturday": 1, "sunday": 1, "holiday": 0}
    # a quarter-hour completes: saved at once; the summary follows
    complete_a_quarter(gw, dt.date(2026, 3, 31), 0)
    gw.history.save(gw.state.history)
    assert gw._history_summary()["days"] == 5
    on_disk, _ = read_history(state / FILE_NAME, params)
    assert on_disk.days[dt.date(2026, 3, 31)].load_kw[0].tolist() == [1.0, 2.0, 3.0]
    # and at stop
    complete_a_quarter(gw, dt.date(2026, 3, 31), 1)
    gw._close_history()
    assert gw.history_store is None
    on_disk, _ = read_history(state / FILE_NAME, params)
    assert on_disk.days[dt.date(2026, 3, 31)].slots_measured == 2


def test_a_failing_save_is_logged_once_retried_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    gw = gateway(state)
    gw._open_history()
    assert gw.history_store is not None
    gw.history_store.close()
    gw.history.store = HistoryStore(state / FILE_NAME, gw.params, busy_timeout_s=0.05)
    other = sqlite3.connect(state / FILE_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    try:
        with caplog.at_level(logging.INFO, logger="hubctl.service"):
            for slot in (0, 1, 2):
                complete_a_quarter(gw, dt.date(2026, 3, 31), slot)
                gw.history.save(gw.state.history)
        failures = [r for r in caplog.records if "could not be saved" in r.getMessage()]
        assert len(failures) == 1
        assert "database is locked" in caplog.text
    finally:
        other.execute("ROLLBACK")
        other.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hubctl.service"):
        complete_a_quarter(gw, dt.date(2026, 3, 31), 3)
        gw.history.save(gw.state.history)
    assert "the load history is saved again" in caplog.text
    gw._close_history()
    on_disk, _ = read_history(state / FILE_NAME, gw.params)
    assert on_disk.days[dt.date(2026, 3, 31)].slots_measured == 4  # nothing the failures held back is lost


def test_a_damaged_file_does_not_keep_the_service_from_starting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(b"\x00garbage" * 512)
    gw = gateway(state)
    with caplog.at_level(logging.INFO):
        gw._open_history()
    assert gw.state.history.days == {}
    assert gw.history_store is not None
    moved = sorted(p.name for p in state.iterdir() if ".damaged-" in p.name)
    assert len(moved) == 1
    assert sum(" is damaged (" in r.getMessage() for r in caplog.records) == 1
    assert f"load history: nothing stored in {state / FILE_NAME} yet" in caplog.text
    complete_a_quarter(gw, dt.date(2026, 3, 31), 0)
    gw.history.save(gw.state.history)
    gw._close_history()
    on_disk, _ = read_history(state / FILE_NAME, gw.params)
    assert list(on_disk.days) == [dt.date(2026, 3, 31)]


def test_without_a_state_directory_the_history_is_kept_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    gw = gateway(None)
    with caplog.at_level(logging.INFO, logger="hubctl.service"):
        gw._open_history()
    assert gw.history_store is None
    assert "no state directory: the load history is kept in memory only" in caplog.text
    complete_a_quarter(gw, dt.date(2026, 3, 31), 0)
    gw.history.save(gw.state.history)  # nothing to write to, nothing raised
    gw._close_history()
    assert gw._history_summary() == {
        "days": 1,
        "first_date": "2026-03-31",
        "last_date": "2026-03-31",
        "quarters": 1,
        "missing_quarters": 0,
        "last_complete_day": None,
        "days_by_type": {"working": 0, "saturday": 0, "sunday": 0, "holiday": 0},
        "persisted": False,
    }
