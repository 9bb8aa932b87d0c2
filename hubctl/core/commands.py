"""Operator commands: parse and validate one `set/<key>` message, and the operator state it changes.

Pure: no I/O, no clock reads, no logging. The MQTT shell (`hubctl.service.operator_api`)
passes the topic key, the payload bytes and the wall-clock time, and gets back
an `Outcome`: the reply to publish and the new, immutable `OperatorState`
(the same object when the command was rejected: a rejected command changes
nothing). docs/mqtt.md describes the topics and payloads for operators.

Payload: a JSON object `{"value": ..., "id": "...", "ttl_s": ..., "ts": ...}`
(`id`, `ttl_s` and `ts` optional) or, for a numeric key, a bare JSON number.

- `id` (a string of at most 64 characters) is echoed in the reply for correlation.
- `ttl_s` makes the setting expire; manual battery modes expire after
  `DEFAULT_MODE_TTL_S` without it. An expired setting is gone: it no longer
  reaches the controller (`OperatorState.overrides`) and is not restored.
- `ts` (UTC seconds when the sender sent the command) lets a late delivery be
  refused: a command older than `MAX_COMMAND_AGE_S`, or older than its own
  `ttl_s`, is rejected as expired. A retained command is always refused (it
  would be applied again after every reconnect).
- `value: null` clears an operator setting (back to the configuration).

Bounded parse (issue #13): a payload is at most `MAX_PAYLOAD_BYTES` (16 KiB) and nested at most
`MAX_JSON_DEPTH` (16) deep, checked on the text before `json.loads` ever recurses (a payload
nested 1,000 deep once raised a RecursionError past every handler and restarted the API). Every
payload ends in a reply: `apply_command` refuses it with a sentence, never an exception.

The state file (`<state dir>/operator.json`) is read by `load_state`: a file that is not UTF-8,
not JSON, nested too deep, not version `STATE_VERSION` or not shaped like one raises
`DamagedStateError` (the shell moves it aside, logs and publishes it and starts with the
configured defaults); single entries the config no longer allows are dropped and listed.

Rules: an operator limit may lower a contracted cap, never raise it (a value
above the contracted cap is refused; `hubctl.core.limits.with_operator` then only
ever lowers the limit in force). A day's operator schedule replaces the
operator's earlier schedule for that day and is merged with the configured
schedule of that day (lowest wins), so it too can only lower the caps.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeGuard

from pydantic import ValidationError

from hubctl.config.site import Caps, DaySchedule, Sharing, Window
from hubctl.core.limits import LimitClock
from hubctl.core.sharing import SharingKey, SharingRule
from hubctl.core.types import BatteryMode, BatteryOverride, Overrides
from hubctl.errors import CommandError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hubctl.config.site import Company, SiteConfig

DEFAULT_MODE_TTL_S: Final = 900.0  # manual battery modes fall back to auto after 15 minutes
MAX_TTL_S: Final = 7 * 86400.0
MAX_MODE_TTL_S: Final = 86400.0
MAX_COMMAND_AGE_S: Final = 60.0  # a command with `ts` older (or further ahead) than this is refused
MAX_PAYLOAD_BYTES: Final = 16384
MAX_JSON_DEPTH: Final = 16  # a command needs 4 (a schedule's windows); the state file 4
MAX_LIMIT_KW: Final = 1e6  # sanity bound where no contracted cap bounds an operator limit
MAX_SCHEDULE_DAYS_AHEAD: Final = 7
MAX_WINDOWS: Final = 96
STATE_VERSION: Final = 1

_ID = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,63}$")
_FIELDS = frozenset({"value", "id", "ttl_s", "ts"})
_LIMIT_NAMES = ("import_limit_kw", "export_limit_kw")

Value = float | BatteryOverride | DaySchedule | SharingRule


class DamagedStateError(ValueError):
    """The operator state file cannot be read as one (the sentence says why)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One accepted operator setting and when it ends (UTC seconds; None: until cleared)."""

    value: Value
    set_at: float
    expires_at: float | None
    command_id: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Reply:
    """The one answer to one command, published on `result` (and the sender's response topic)."""

    id: str | None
    key: str
    ok: bool
    value: Any = None  # as applied (JSON-ready); None when rejected or cleared
    error: str | None = None
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "ok": self.ok,
            "value": self.value,
            "error": self.error,
            "expires_at": self.expires_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class OperatorState:
    """Accepted operator settings by command key ("import_limit_kw", "battery/b1/mode",
    "schedule/2026-05-01", ...). Immutable: every accepted command gives a new one."""

    settings: Mapping[str, Setting] = field(default_factory=dict)

    def active(self, now: float) -> dict[str, Setting]:
        return {k: s for k, s in self.settings.items() if not s.is_expired(now)}

    def without_expired(self, now: float) -> OperatorState:
        live = self.active(now)
        return self if len(live) == len(self.settings) else OperatorState(live)

    def overrides(self, now: float) -> Overrides:
        """What the controller takes in its `Snapshot`: the settings in force at `now`."""
        park: dict[str, float] = {}
        comp_imp: dict[str, float] = {}
        comp_exp: dict[str, float] = {}
        battery: dict[str, BatteryOverride] = {}
        reserve: dict[str, float] = {}
        for key, s in self.active(now).items():
            parts = key.split("/")
            v = s.value
            if isinstance(v, float):
                if len(parts) == 1:
                    park[parts[0]] = v
                elif parts[0] == "company":
                    (comp_imp if parts[2] == "import_limit_kw" else comp_exp)[parts[1]] = v
                elif parts[0] == "battery":
                    reserve[parts[1]] = v
            elif isinstance(v, BatteryOverride):
                battery[parts[1]] = v
        return Overrides(
            park_import_kw=park.get("import_limit_kw"),
            park_export_kw=park.get("export_limit_kw"),
            company_import_kw=comp_imp,
            company_export_kw=comp_exp,
            battery=battery,
            reserve_soc_pct=reserve,
        )

    def schedules(self, now: float) -> dict[dt.date, DaySchedule]:
        """The operator's day schedules in force (a day's schedule ends after its date)."""
        out: dict[dt.date, DaySchedule] = {}
        for s in self.active(now).values():
            if isinstance(s.value, DaySchedule):
                out[s.value.date] = s.value
        return out

    def park_caps(self, base: Caps, now: float) -> Caps:
        """The park's caps with the operator's day schedules merged in (lowest wins, so never raised)."""
        ours = self.schedules(now)
        if not ours:
            return base
        merged = {s.date: s for s in base.schedules}
        for day, sched in ours.items():
            old = merged.get(day)
            windows = [*(old.windows if old else []), *sched.windows]
            merged[day] = DaySchedule(date=day, windows=windows)
        return base.model_copy(update={"schedules": [merged[d] for d in sorted(merged)]})

    def limit_clock(self, cfg: SiteConfig, now: float) -> LimitClock:
        """A `LimitClock` for `control.Params.limits` with the operator's schedules in force."""
        return LimitClock(self.park_caps(cfg.park, now), {c.id: c for c in cfg.companies}, cfg.tz)

    def sharing(self, now: float) -> SharingRule | None:
        """The operator's sharing key, None: the configured one."""
        s = self.active(now).get("sharing/key")
        return s.value if s is not None and isinstance(s.value, SharingRule) else None

    def describe(self, now: float) -> dict[str, Any]:
        """JSON-ready view of the settings in force, for the state topic."""
        return {
            key: {
                "value": value_json(s.value),
                "set_at": s.set_at,
                "expires_at": s.expires_at,
                "id": s.command_id,
            }
            for key, s in sorted(self.active(now).items())
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply
    state: OperatorState
    changed: bool  # the state differs (accepted, and not a get/state)


# --- parsing ------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise CommandError(f"{name} is not a number: send a finite number")


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: object, what: str) -> float:
    if not _is_number(v):
        raise CommandError(f"{what} must be a number, got {_show(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise CommandError(f"{what} is too large") from None
    if not math.isfinite(x):
        raise CommandError(f"{what} must be a finite number")
    return x


def _show(v: object) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class _Message:
    value: Any
    id: str | None
    ttl_s: float | None
    ts: float | None


def json_depth(text: str) -> int:
    """How deep the arrays and objects of JSON `text` nest (brackets inside strings not counted).

    A loop over the text, so that the depth is known before a recursive parser sees it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _decode(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"the payload is {len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("the payload is not UTF-8 text") from None
    if not text.strip():
        raise CommandError('the payload is empty: send a JSON object {"value": ...}')
    if json_depth(text) > MAX_JSON_DEPTH:
        raise CommandError(f"the payload is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CommandError(f"the payload is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise CommandError("the payload is nested too deeply") from None
    except ValueError as exc:  # int too long to convert
        raise CommandError(f"the payload is not usable JSON: {exc}") from None


def _message(data: Any, numeric: bool) -> _Message:
    if not isinstance(data, dict):
        if numeric and _is_number(data):
            return _Message(data, None, None, None)
        hint = "a JSON object" + (" or a bare number" if numeric else "")
        raise CommandError(f'the payload must be {hint} like {{"value": ...}}, got {_show(data)}')
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise CommandError(f"unknown field(s) {', '.join(map(repr, unknown))}: use value, id, ttl_s, ts")
    cid = data.get("id")
    if cid is not None and not (isinstance(cid, str) and _ID.match(cid)):
        raise CommandError("id must be a string of 1 to 64 printable ASCII characters")
    if "value" not in data:
        raise CommandError('the payload has no "value" (use null to clear a setting)')
    ttl = data.get("ttl_s")
    ttl_s = None
    if ttl is not None:
        ttl_s = _finite(ttl, "ttl_s")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise CommandError(f"ttl_s must be more than 0 and at most {MAX_TTL_S:g} s, got {ttl_s:g}")
    ts = None if data.get("ts") is None else _finite(data["ts"], "ts")
    return _Message(data["value"], cid, ttl_s, ts)


def _id_of(payload: bytes) -> str | None:
    """The command id, if one can be read at all (for the reply of a rejected command)."""
    try:
        data = _decode(payload)
    except CommandError:
        return None
    cid = data.get("id") if isinstance(data, dict) else None
    return cid if isinstance(cid, str) and _ID.match(cid) else None


# --- validation per key -------------------------------------------------------------------------------------


def _company(cfg: SiteConfig, cid: str) -> Company:
    for c in cfg.companies:
        if c.id == cid:
            return c
    known = ", ".join(c.id for c in cfg.companies)
    raise CommandError(f"unknown company {cid!r} (companies: {known})")


def _limit(value: Any, name: str, contract: float | None, where: str) -> float:
    kw = _finite(value, name)
    if kw < 0:
        raise CommandError(f"{name} must be >= 0 kW, got {kw:g}")
    if contract is not None and kw > contract:
        raise CommandError(
            f"{name} {kw:g} kW is above the contracted {contract:g} kW of {where}: "
            "an operator limit may lower a cap, never raise it"
        )
    if kw > MAX_LIMIT_KW:
        raise CommandError(f"{name} {kw:g} kW is above {MAX_LIMIT_KW:g} kW")
    return kw


def _battery_mode(value: Any, company: Company) -> BatteryOverride:
    bat = company.battery
    assert bat is not None
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        raise CommandError(
            f'the mode must be a string or {{"mode": ..., "power_kw": ...}}, got {_show(value)}'
        )
    unknown = sorted(set(value) - {"mode", "power_kw"})
    if unknown:
        raise CommandError(
            f"unknown field(s) {', '.join(map(repr, unknown))} in the mode: use mode, power_kw"
        )
    names = ", ".join(m.value for m in BatteryMode)
    try:
        mode = BatteryMode(str(value.get("mode")))
    except ValueError:
        raise CommandError(f"mode must be one of {names}, got {_show(value.get('mode'))}") from None
    power = value.get("power_kw")
    if mode in {BatteryMode.AUTO, BatteryMode.HOLD}:
        if power is not None:
            raise CommandError(f"mode {mode.value} takes no power_kw")
        return BatteryOverride(mode)
    if power is None:
        raise CommandError(f"mode {mode.value} needs power_kw")
    kw = _finite(power, "power_kw")
    top = bat.max_charge_kw if mode is BatteryMode.CHARGE else bat.max_discharge_kw
    if not 0 < kw <= top:
        raise CommandError(
            f"power_kw for {mode.value} must be more than 0 and at most {top:g} kW "
            f"(the battery of {company.id}), got {kw:g}"
        )
    return BatteryOverride(mode, kw)


def _reserve(value: Any, company: Company) -> float:
    bat = company.battery
    assert bat is not None
    pct = _finite(value, "reserve_soc_pct")
    if not bat.min_soc_pct <= pct <= bat.max_soc_pct:
        raise CommandError(
            f"reserve_soc_pct must lie within {bat.min_soc_pct:g}..{bat.max_soc_pct:g} % "
            f"(the battery of {company.id}), got {pct:g}"
        )
    return pct


def _pydantic_problem(exc: ValidationError, prefix: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _local_midnight(day: dt.date, cfg: SiteConfig) -> float:
    return dt.datetime.combine(day, dt.time(), cfg.tz).timestamp()


def _schedule(value: Any, cfg: SiteConfig, now: float) -> tuple[DaySchedule | dt.date, float]:
    """A day schedule (or the date to clear) and when it ends: the end of its date (of the next day
    when a window runs across midnight)."""
    if not isinstance(value, dict):
        raise CommandError(
            f'the schedule must be {{"date": "YYYY-MM-DD", "windows": [...]}}, got {_show(value)}'
        )
    unknown = sorted(set(value) - {"date", "windows"})
    if unknown:
        raise CommandError(
            f"unknown field(s) {', '.join(map(repr, unknown))} in the schedule: use date, windows"
        )
    raw_date, raw_windows = value.get("date"), value.get("windows")
    if not isinstance(raw_date, str):
        raise CommandError('the schedule needs "date": "YYYY-MM-DD"')
    try:
        day = dt.date.fromisoformat(raw_date)
    except ValueError:
        raise CommandError(f"date {raw_date!r} is not a date YYYY-MM-DD") from None
    today = dt.datetime.fromtimestamp(now, cfg.tz).date()
    if day < today:
        raise CommandError(f"the schedule is for {day}, which has passed (today is {today} at the site)")
    if day > today + dt.timedelta(days=MAX_SCHEDULE_DAYS_AHEAD):
        raise CommandError(f"the schedule is for {day}, more than {MAX_SCHEDULE_DAYS_AHEAD} days ahead")
    if not isinstance(raw_windows, list):
        raise CommandError('the schedule needs "windows": a list ([] clears the day)')
    if len(raw_windows) > MAX_WINDOWS:
        raise CommandError(f"the schedule has {len(raw_windows)} windows, more than {MAX_WINDOWS}")
    windows = []
    for i, raw in enumerate(raw_windows):
        try:
            w = Window.model_validate(raw)
        except ValidationError as exc:
            raise CommandError(_pydantic_problem(exc, f"windows.{i}")) from None
        for name in _LIMIT_NAMES:
            kw = getattr(w, name)
            if kw is not None:
                _limit(kw, f"windows.{i}.{name}", getattr(cfg.park, name), "the park")
        windows.append(w)
    crosses = any(w.start_s > w.end_s for w in windows)
    ends = _local_midnight(day + dt.timedelta(days=2 if crosses else 1), cfg)
    if not windows:
        return day, ends
    return DaySchedule(date=day, windows=windows), ends


def _sharing(value: Any, cfg: SiteConfig) -> SharingRule:
    if isinstance(value, str):
        value = {"key": value}
    if not isinstance(value, dict):
        raise CommandError(f'the sharing key must be a string or {{"key": ..., ...}}, got {_show(value)}')
    unknown = sorted(set(value) - {"key", "shares", "order"})
    if unknown:
        raise CommandError(f"unknown field(s) {', '.join(map(repr, unknown))}: use key, shares, order")
    try:
        model = Sharing.model_validate(value)
    except ValidationError as exc:
        raise CommandError(_pydantic_problem(exc, "")) from None
    ids = {c.id for c in cfg.companies}
    strays = sorted((set(model.shares) | set(model.order)) - ids)
    if strays:
        raise CommandError(f"unknown company id(s) {', '.join(map(repr, strays))} in the sharing key")
    try:
        return SharingRule(SharingKey(model.key.value), model.shares, model.order)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None


def value_json(v: Value) -> Any:
    """A setting's value as JSON data (the `value` of a reply and of the state file)."""
    if isinstance(v, float):
        return v
    if isinstance(v, BatteryOverride):
        if v.mode in {BatteryMode.CHARGE, BatteryMode.DISCHARGE}:
            return {"mode": v.mode.value, "power_kw": v.power_kw}
        return {"mode": v.mode.value}
    if isinstance(v, DaySchedule):
        return v.model_dump(mode="json", exclude_none=True)
    return {"key": v.key.value, "shares": dict(v.shares), "order": list(v.order)}


def _is_numeric_key(key: str) -> bool:
    return key.endswith(("_kw", "_pct"))


def _validate(  # noqa: PLR0911 - one return per key kind reads best
    cfg: SiteConfig, key: str, value: Any, ttl_s: float | None, now: float
) -> tuple[str, Value | None, float | None]:
    """(storage key, validated value or None to clear, expires_at)."""
    parts = key.split("/")
    expires = None if ttl_s is None else now + ttl_s
    if len(parts) == 1 and parts[0] in _LIMIT_NAMES:
        name = parts[0]
        if value is None:
            return key, None, None
        return key, _limit(value, name, getattr(cfg.park, name), "the park"), expires
    if len(parts) == 3 and parts[0] == "company" and parts[2] in _LIMIT_NAMES:
        company = _company(cfg, parts[1])
        if value is None:
            return key, None, None
        return key, _limit(value, parts[2], getattr(company, parts[2]), company.id), expires
    if len(parts) == 3 and parts[0] == "battery" and parts[2] in {"mode", "reserve_soc_pct"}:
        company = _company(cfg, parts[1])
        if company.battery is None:
            with_bat = ", ".join(c.id for c in cfg.companies if c.battery is not None) or "none"
            raise CommandError(f"company {company.id!r} has no battery (batteries: {with_bat})")
        if parts[2] == "reserve_soc_pct":
            return key, None if value is None else _reserve(value, company), expires
        if value is None:
            raise CommandError(
                'the mode cannot be null: send "auto" to give the battery back to the controller'
            )
        mode = _battery_mode(value, company)
        if mode.mode is BatteryMode.AUTO:
            return key, None, None
        if ttl_s is not None and ttl_s > MAX_MODE_TTL_S:
            raise CommandError(f"ttl_s of a manual battery mode must be at most {MAX_MODE_TTL_S:g} s")
        return key, mode, now + (DEFAULT_MODE_TTL_S if ttl_s is None else ttl_s)
    if key == "schedule":
        if ttl_s is not None:
            raise CommandError("a schedule takes no ttl_s: it ends with its date")
        sched, ends = _schedule(value, cfg, now)
        if isinstance(sched, dt.date):
            return f"schedule/{sched}", None, None
        return f"schedule/{sched.date}", sched, ends
    if key == "sharing/key":
        if value is None:
            return key, None, None
        return key, _sharing(value, cfg), expires
    raise CommandError(f"unknown key {key!r}: see docs/mqtt.md for the keys")


def _checked(
    cfg: SiteConfig, key: str, payload: bytes, now: float, *, retained: bool
) -> tuple[_Message, tuple[str, Value | None, float | None]]:
    if retained:
        raise CommandError("a retained command is refused: publish commands without the retain flag")
    msg = _message(_decode(payload), _is_numeric_key(key))
    if msg.ts is not None:
        age = now - msg.ts
        if abs(age) > MAX_COMMAND_AGE_S or (msg.ttl_s is not None and age >= msg.ttl_s):
            within = min(MAX_COMMAND_AGE_S, msg.ttl_s or MAX_COMMAND_AGE_S)
            raise CommandError(
                f"the command expired: sent {age:.0f} s ago (ts), accepted within {within:g} s"
            )
    return msg, _validate(cfg, key, msg.value, msg.ttl_s, now)


def apply_command(
    cfg: SiteConfig,
    state: OperatorState,
    key: str,
    payload: bytes,
    now: float,
    *,
    retained: bool = False,
) -> Outcome:
    """Validate one command against the config and the operator state at `now` (UTC seconds).

    `key` is the topic below `set/` ("import_limit_kw", "battery/b1/mode", ...),
    or "get/state" for a request to republish the state (always accepted).
    """
    state = state.without_expired(now)
    if key == "get/state" and not retained:
        return Outcome(Reply(_id_of(payload), key, ok=True), state, changed=False)
    try:
        msg, (store_key, value, expires) = _checked(cfg, key, payload, now, retained=retained)
    except CommandError as exc:
        return Outcome(Reply(_id_of(payload), key, ok=False, error=str(exc)), state, changed=False)
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # a case no check foresaw
        error = f"not applied: the command could not be checked ({type(exc).__name__})"
        return Outcome(Reply(_id_of(payload), key, ok=False, error=error), state, changed=False)
    settings = dict(state.settings)
    if value is None:
        settings.pop(store_key, None)
        shown: Any = None
    else:
        settings[store_key] = Setting(value, now, expires, msg.id)
        shown = value_json(value)
    reply = Reply(msg.id, key, ok=True, value=shown, expires_at=expires if value is not None else None)
    return Outcome(reply, OperatorState(settings), changed=True)


# --- persistence --------------------------------------------------------------------------------------------


def dump_state(state: OperatorState) -> str:
    """The operator state as JSON text (the value as applied, with when it was set and ends)."""
    data = {
        "version": STATE_VERSION,
        "settings": [
            {
                "key": key,
                "value": value_json(s.value),
                "set_at": s.set_at,
                "expires_at": s.expires_at,
                "id": s.command_id,
            }
            for key, s in sorted(state.settings.items())
        ],
    }
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def _state_data(text: str) -> list[Any]:
    """The `settings` list of a state file's text; DamagedStateError when it is not one."""
    if len(text) > 64 * MAX_PAYLOAD_BYTES:
        raise DamagedStateError(f"{len(text)} characters, more than any operator state")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise DamagedStateError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except CommandError:
        raise DamagedStateError("not valid JSON (NaN or Infinity)") from None
    except json.JSONDecodeError as exc:
        raise DamagedStateError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        raise DamagedStateError(f"not usable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DamagedStateError(f"not a JSON object with version {STATE_VERSION}")
    if data.get("version") != STATE_VERSION:
        raise DamagedStateError(f"not version {STATE_VERSION} (version {_show(data.get('version'))})")
    settings = data.get("settings", [])
    if not isinstance(settings, list):
        raise DamagedStateError(f"settings is not a list, got {_show(settings)}")
    return settings


def _entry(entry: Any, cfg: SiteConfig, now: float) -> tuple[str, Setting | None, str]:
    """One saved setting, validated again: (key, the setting, "") or (key, None, why it is dropped)."""
    if not isinstance(entry, dict):
        return "", None, f"entry {_show(entry)} is not an object: dropped"
    key = str(entry.get("key"))[:200]
    expires = entry.get("expires_at")
    if expires is not None and (not _is_number(expires) or now >= float(expires)):
        return key, None, f"{key}: expired"
    set_at = entry.get("set_at")
    cid = entry.get("id")
    cmd_key = "schedule" if key.startswith("schedule/") else key
    try:
        store_key, value, _ = _validate(cfg, cmd_key, entry.get("value"), None, now)
    except CommandError as exc:
        return key, None, f"{key}: {exc}: dropped"
    if value is None or store_key != key:
        return key, None, f"{key}: no value: dropped"
    setting = Setting(
        value,
        float(set_at) if _is_number(set_at) else now,
        float(expires) if _is_number(expires) else None,
        cid if isinstance(cid, str) and _ID.match(cid) else None,
    )
    return key, setting, ""


def load_state(text: str, cfg: SiteConfig, now: float) -> tuple[OperatorState, list[str]]:
    """Restore saved settings: every entry is validated again against the current config; expired
    ones and ones the config no longer allows are dropped (listed, one sentence each). A text that
    is not a state file raises DamagedStateError (module docstring)."""
    settings: dict[str, Setting] = {}
    dropped: list[str] = []
    for entry in _state_data(text):
        try:
            key, setting, why = _entry(entry, cfg, now)
        except (ValueError, TypeError, ArithmeticError) as exc:  # a case no check foresaw
            dropped.append(f"entry {_show(entry)}: not usable ({type(exc).__name__}): dropped")
            continue
        if setting is None:
            dropped.append(why)
        else:
            settings[key] = setting
    return OperatorState(settings), dropped
