"""What hubctl wrote to the limits a device keeps and what the installer set: `device-limits.json`.

What it is: `LimitFile`, the service's `hubctl.devices.base.LimitRecord` (#13 item 4). A Huawei
SUN2000's derating (40125) and a SunSpec 123 limit written without a revert time survive hubctl;
at the next start the drivers would read hubctl's own fail-safe value back as an installer's limit
and never exceed it again. The drivers record in this file, per device, the installer's limit as
found when hubctl first saw the device (none: no limit) and each value hubctl writes to such a
limit before writing it; at start a value hubctl wrote gives the recorded installer's limit, and
the service then restores it (`Device.release` with a first decision of "no limit").

Decisions:

- One small JSON document, rewritten whole on every change (a temporary file in the state
  directory, then `os.replace`: a reader never sees half of it). Changes are rare: a persistent
  limit is written only when the decision moves it by more than the writer's deadband.
- A file that cannot be read or parsed is moved aside (`device-limits.json.damaged-<time>`) with a
  warning and the record starts empty: the drivers then take what they find as the installer's,
  as without a record. An entry of the wrong shape is skipped (warning naming the device).
- A write that fails (a full disk) is logged once, at warning, and retried with the next change;
  it never stops a setpoint. Until then a restart could take hubctl's last value for the
  installer's (the behaviour without a record).
- Without a state directory there is no record (memory would not survive the restart it exists
  for); the gateway says so at start when there are PV inverters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hubctl.devices.base import RecordedLimit

log = logging.getLogger("hubctl.service")  # the name the journal has always shown

FILE_NAME = "device-limits.json"
_VERSION = 1


class LimitFile:
    """`<state dir>/device-limits.json`: a `LimitRecord` for the drivers (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, RecordedLimit] = self._load()
        self._failing = False

    def get(self, device_id: str) -> RecordedLimit | None:
        return self.entries.get(device_id)

    def put(self, device_id: str, entry: RecordedLimit) -> None:
        self.entries[device_id] = entry
        self._save()

    def _load(self) -> dict[str, RecordedLimit]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            return self._damaged(str(exc))
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return self._damaged(str(exc))
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, dict):
            return self._damaged("no 'devices' object")
        entries = {}
        for device_id, raw in devices.items():
            entry = _entry(raw)
            if entry is None:
                log.warning("%s: %s: its recorded limit is not readable; skipped", self.path, device_id)
                continue
            entries[str(device_id)] = entry
        return entries

    def _damaged(self, why: str) -> dict[str, RecordedLimit]:
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            self.path.replace(aside)
        except OSError as exc:
            log.warning("%s is damaged (%s) and could not be moved aside (%s)", self.path, why, exc.strerror)
        else:
            log.warning("%s is damaged (%s): moved to %s; starting a new one", self.path, why, aside.name)
        return {}

    def _save(self) -> None:
        document = {
            "version": _VERSION,
            "devices": {device_id: asdict(entry) for device_id, entry in sorted(self.entries.items())},
        }
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(document, f, indent=1)
                tmp.replace(self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "%s could not be written (%s): a restart may take hubctl's own limit for an"
                    " installer's; tried again with the next change",
                    self.path,
                    exc.strerror or exc,
                )
            self._failing = True
            return
        if self._failing:
            log.info("%s written again", self.path)
        self._failing = False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _entry(raw: Any) -> RecordedLimit | None:
    """A RecordedLimit from its JSON form; None if it has not that shape."""
    if not isinstance(raw, dict):
        return None
    point, unit, installer, written = (raw.get(k) for k in ("point", "unit", "installer", "written"))
    if not isinstance(point, str) or not isinstance(unit, str) or not isinstance(written, list):
        return None
    values = [_number(w) for w in written]
    if (installer is not None and _number(installer) is None) or any(v is None for v in values):
        return None
    return RecordedLimit(
        point,
        unit,
        None if installer is None else _number(installer),
        tuple(v for v in values if v is not None),
    )
