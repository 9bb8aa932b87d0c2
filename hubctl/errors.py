"""Every error hubctl raises across a layer boundary, and the exit codes they end a command with.

One module for all layers (python-kasa's `exceptions.py`, aiomqtt's `exceptions.py`): the core,
the codecs, the device drivers, storage and the commands all import their errors from here, so a
caller can catch a family without importing the layer that raises it, and an exit code is written
once. This module imports nothing from hubctl.

Families:
- `ProblemsError`: an input that cannot be used, with one line per problem (`path: message`):
  `ConfigError` (site config, scenario), `RegisterMapError` (a register map), `HistoryImportError`
  (a history file). The CLI prints `problems` and exits with `exit_code`.
- `DeviceConfigError`: a device entry that cannot be driven (exit 78 at start-up).
- `DeviceError`: a device that did not do what was asked; `retry` says whether trying later helps,
  `kind` names the failure for health and logs. A setpoint hubctl refuses before writing is a
  `CommandRejectedError`: `SetpointUnsupportedError` (this kind of setpoint, never) or
  `SetpointOutOfBoundsError` (this value, not: another may do).
- `EncodeError`/`DecodeError`: a value that does not fit a register point (pure codec errors).
- `HistoryStoreError`, `InfluxUnavailableError`/`InfluxRejectedError`: storage.
- `CommandError`: an operator command that is refused (the reply's sentence).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import Sequence

EX_DATAERR = 65  # sysexits.h: the input data was incorrect (a history file)
EX_CONFIG = 78  # sysexits.h: a configuration error; RestartPreventExitStatus in the systemd unit
MAX_PROBLEM_LINES = 20  # problems listed before "... N more"


# --- Inputs that cannot be used ------------------------------------------------------------------


class ProblemsError(Exception):
    """An input that cannot be used. `problems` holds one line per problem: `path: message`."""

    exit_code: ClassVar[int] = EX_CONFIG

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.lines()))

    def lines(self, limit: int | None = None) -> list[str]:
        """The problems to show (all of them unless `limit` is given, then `... N more`)."""
        if limit is None or len(self.problems) <= limit:
            return list(self.problems)
        return [*self.problems[:limit], f"... {len(self.problems) - limit} more"]


class ConfigError(ProblemsError):
    """A configuration (site config, scenario) that cannot be used."""


class RegisterMapError(ProblemsError):
    """A register map that cannot be used."""


class HistoryImportError(ProblemsError):
    """A history file that cannot be imported; its message lists at most MAX_PROBLEM_LINES lines."""

    exit_code = EX_DATAERR

    def lines(self, limit: int | None = MAX_PROBLEM_LINES) -> list[str]:
        return super().lines(limit)


class DeviceConfigError(Exception):
    """A device entry that cannot be driven: unknown map, a role the map does not offer, no rating."""

    exit_code: ClassVar[int] = EX_CONFIG


# --- Register codec --------------------------------------------------------------------------------


class EncodeError(ValueError):
    """A value that cannot be written to a point: not finite, outside its bounds or its type's range."""

    def __init__(self, point: str, value: float, reason: str) -> None:
        self.point = point
        self.value = value
        self.reason = reason
        super().__init__(f"{point}: cannot encode {value!r}: {reason}")


class DecodeError(ValueError):
    """Register words that do not fit a point (wrong count, not 16-bit) or a missing scale factor."""


# --- Devices ---------------------------------------------------------------------------------------


class DeviceError(Exception):
    """Base of every device error. `retry` says whether trying again later can help."""

    retry: ClassVar[bool] = True
    kind: ClassVar[str] = "device"


class DeviceUnavailableError(DeviceError):
    """No answer: connection refused or lost, a timeout, a gateway whose target does not answer."""

    kind = "unavailable"


class DeviceBusyError(DeviceError):
    """The device answered that it is busy (Modbus exception 6, or 5 'acknowledge')."""

    kind = "busy"


class DeviceProtocolError(DeviceError):
    """The device refused the request as malformed (exceptions 1-3) or answered something unusable."""

    retry = False
    kind = "protocol"


class DeviceIdentityError(DeviceError):
    """The device is not what the configuration says (e.g. no SunSpec marker, a required model missing)."""

    retry = False
    kind = "identity"


class CommandRejectedError(DeviceError):
    """hubctl refused a command before writing it. Raised as one of its two kinds, which callers tell
    apart: `SetpointUnsupportedError` (never this kind of setpoint) and `SetpointOutOfBoundsError`
    (not this value)."""

    retry = False
    kind = "rejected"


class SetpointUnsupportedError(CommandRejectedError):
    """The device cannot take this kind of setpoint at all: its role, map or models have no way to
    express it (no such point or control model, no rating to express kW in %). Retrying cannot help
    until the configuration changes."""

    kind = "unsupported"


class SetpointOutOfBoundsError(CommandRejectedError):
    """Not this value: outside the device's own bounds (`low_kw`..`high_kw` where known), not finite, or
    not encodable in its register. Another value may be taken."""

    kind = "out-of-bounds"

    def __init__(self, message: str, low_kw: float | None = None, high_kw: float | None = None) -> None:
        self.low_kw = low_kw
        self.high_kw = high_kw
        super().__init__(message)


class CommandNotConfirmedError(DeviceProtocolError):
    """The device accepted a write but reads back another value."""

    kind = "not-confirmed"


# --- Storage ---------------------------------------------------------------------------------------


class HistoryStoreError(Exception):
    """A history file that cannot be read as one (damaged, another schema)."""


class InfluxUnavailableError(Exception):
    """The server did not take the batch now; the same batch may succeed later (retry with backoff)."""


class InfluxRejectedError(Exception):
    """The server refused the data itself (400/413/422); retrying the same lines cannot succeed."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


# --- Operator commands -----------------------------------------------------------------------------


class CommandError(ValueError):
    """A command that is refused; the message is a sentence for the operator."""
