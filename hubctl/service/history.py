"""The controller's load history on disk: loaded at start, saved per quarter-hour, saved at stop.

What it is: `HistoryKeeper`, the gateway's side of `hubctl.data.history_store`
(`<state dir>/history.sqlite`). `open` loads it for the controller's first state (the log says how
many days of which type); `after_cycle` saves whenever the history's revision moved (a
quarter-hour completed: one day's row, a few ms, in the control loop); `close` completes the
quarter in progress if it was seen for at least half, saves and closes. A damaged file is moved
aside and the service starts empty; a failed save is logged once and the days are written with
the next quarter-hour. Without a state directory the history lives in memory only. `summary` is
the state document's `history` (cached per revision).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hubctl.data.history_store import FILE_NAME as HISTORY_FILE
from hubctl.data.history_store import HistoryStore, summarize

if TYPE_CHECKING:
    from pathlib import Path

    from hubctl.core.history import History
    from hubctl.core.types import Params, State

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


class HistoryKeeper:
    """The load history in the state directory `directory` (None: memory only); see the module docstring."""

    def __init__(self, directory: Path | None, revision: int) -> None:
        self.directory = directory
        self.store: HistoryStore | None = None
        self.revision = revision  # the revision last saved (or loaded)
        self._failed = False
        self._doc: tuple[int, dict[str, Any]] | None = None  # (revision, summary) for the state

    def open(self, params: Params) -> History | None:
        """The stored history for the controller's first state; None: start with none (memory only)."""
        directory = self.directory
        if directory is None:
            log.info("no state directory: the load history is kept in memory only (a restart forgets it)")
            return None
        path = directory / HISTORY_FILE
        try:
            store = HistoryStore(path, params)
        except (OSError, sqlite3.Error):
            log.exception("cannot open the load history %s: keeping it in memory only", path)
            return None
        try:
            history = store.load()
        except (OSError, sqlite3.Error):
            store.close()
            log.exception("cannot read the load history %s: keeping it in memory only", path)
            return None
        self.store = store
        self.revision = history.revision
        s = summarize(history)
        if s.days:
            log.info(
                "load history: %d day(s) loaded from %s, %s to %s, %d quarter-hours; days with at least half "
                "of them: %s",
                s.days,
                path,
                s.first_date,
                s.last_date,
                s.quarters,
                s.types_text(),
            )
        else:
            log.info("load history: nothing stored in %s yet; the controller learns it as it runs", path)
        return history

    def after_cycle(self, history: History) -> None:
        """Save when the history's revision moved (a quarter-hour completed: one day's row)."""
        if history.revision != self.revision:
            self.save(history)

    def save(self, history: History) -> None:
        """Write the days that changed (one row per completed quarter-hour). A failure is logged once and
        the same days are written with the next quarter-hour's save; it never stops control."""
        self.revision = history.revision
        store = self.store
        if store is None:
            return
        try:
            store.save(history)
        except (OSError, sqlite3.Error):
            if not self._failed:
                log.exception(
                    "the load history could not be saved (logged once); trying again next quarter-hour"
                )
            self._failed = True
        else:
            if self._failed:
                log.info("the load history is saved again")
            self._failed = False

    def close(self, state: State) -> State:
        """The last save (with the quarter in progress, if it was seen for at least half), then close.

        Returns the controller's state with that quarter completed (unchanged without a store)."""
        store = self.store
        if store is None:
            return state
        state = replace(state, history=state.history.complete_current())
        if state.history.revision != self.revision:
            self.save(state.history)
        try:
            store.close()
        except sqlite3.Error:
            log.exception("the load history could not be closed cleanly")
        self.store = None
        return state

    def summary(self, history: History) -> dict[str, Any]:
        """What the controller knows of the park's load, for the state document (cached per revision)."""
        cached = self._doc
        if cached is None or cached[0] != history.revision:
            doc = summarize(history).as_dict()
            doc["persisted"] = self.store is not None
            cached = self._doc = (history.revision, doc)
        return cached[1]
