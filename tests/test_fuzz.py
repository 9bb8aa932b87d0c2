"""Fuzzing the two inputs anyone can hand hubctl (issue #13, acceptance): the site config and the
operator commands, over nesting, size, encoding and types, with hypothesis.

- **site config**: `hubctl check-config` (in process: `hubctl.cli.main.main`) on files made of
  random bytes, text in other encodings, a valid config with random values put at random places
  (booleans, NaN, huge numbers, lists for mappings, ...), deep nesting and duplicate keys. Every
  case ends in exit 0 or 78, never a traceback (any other exception fails the test, and so would
  any other exit code). `hubctl run` shares the loading and the start checks
  (`service/preflight.py`); tests/test_config_faults.py runs it on the named cases.
- **operator commands**: `apply_command` on every key kind with random bytes, random JSON,
  payloads nested up to 2,000 deep, too large, in other encodings: always a `Reply` (ok, or an
  error sentence), never an exception, and the reply is valid JSON. The state file
  (`load_state`): any text is restored or refused as damaged (`DamagedStateError`), nothing else.
  tests/test_operator_faults.py sends the hostile ones through a real mosquitto.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_commands import CFG, KEYS, NOW, json_values, payloads

from hubctl.cli.main import main
from hubctl.core.commands import (
    MAX_PAYLOAD_BYTES,
    DamagedStateError,
    OperatorState,
    apply_command,
    load_state,
)

if TYPE_CHECKING:
    from pathlib import Path

GOOD: dict[str, Any] = {
    "site": {"id": "fuzz", "timezone": "Europe/Amsterdam"},
    "park": {"import_limit_kw": 900, "export_limit_kw": 500,
             "windows": [{"start": "16:00", "end": "20:00", "import_limit_kw": 700}]},
    "companies": [
        {"id": "bakery", "pv": {"peak_kw": 300}, "import_limit_kw": 400},
        {"id": "cold-store", "battery": {"capacity_kwh": 400, "max_charge_kw": 200, "max_discharge_kw": 200}},
    ],
    "sharing": {"key": "pro_rata"},
    "control": {"cycle_s": 1.0, "margin_pct": 2.0},
    "service": {"revert_s": 60.0, "fail_after": 3},
    "devices": [
        {"id": "m1", "company": "bakery", "role": "grid_meter", "driver": "eastron-sdm630",
         "modbus": {"host": "192.0.2.1", "port": 502, "unit_id": 1}},
    ],
}  # fmt: skip

_SETTINGS_ENV = ("STATE_DIRECTORY", "HUBCTL_INFLUX_URL", "HUBCTL_MQTT_URL", "HUBCTL_MQTT_USERNAME")
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["no", "yes", "on", "off", "24:00", "25:00", "mqtt", "sunspec", "http://x", "-1"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, (*prefix, index))
    return out


def _put(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return data


def _check(path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    rc = main(["check-config", str(path)])
    out = capsys.readouterr()
    assert rc in (0, 78), out.err
    if rc == 78:
        assert "problem(s)" in out.err
        assert "Traceback" not in out.err


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site.yaml"


def test_the_fuzz_base_is_a_good_config(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", str(site)]) == 0, capsys.readouterr().err


@_FUZZ
@given(st.binary(max_size=2048))
def test_config_random_bytes(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    site.write_bytes(raw)
    _check(site, monkeypatch, capsys)


@_FUZZ
@given(st.sampled_from(["latin-1", "utf-16", "utf-32", "cp1252", "utf-8-sig"]), st.text(max_size=40))
def test_config_other_encodings(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], encoding: str, name: str
) -> None:
    text = yaml.safe_dump({**GOOD, "site": {"id": "fuzz", "name": name or "é"}}, allow_unicode=True)
    site.write_bytes(text.encode(encoding, errors="replace"))
    _check(site, monkeypatch, capsys)


@_FUZZ
@given(st.data())
def test_config_random_values_at_random_places(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data: st.DataObject
) -> None:
    config = copy.deepcopy(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(config)))
        config = _put(config, path, data.draw(values))
    try:
        text = yaml.safe_dump(config, allow_unicode=True)
    except (yaml.YAMLError, RecursionError, OverflowError):
        return  # not something YAML can write
    site.write_text(text, encoding="utf-8")
    _check(site, monkeypatch, capsys)


@_FUZZ
@given(
    st.integers(1, 6000),
    st.sampled_from(["[", "{a: ", "- ", "{"]),
    st.sampled_from(["park", "companies", "devices"]),
)
def test_config_deep_nesting(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    depth: int,
    opener: str,
    where: str,
) -> None:
    closer = {"[": "]", "{a: ": "}", "{": "}", "- ": ""}[opener]
    if opener == "- ":
        body = "".join("  " * i + "-\n" for i in range(1, min(depth, 300)))
        text = f"{where}:\n{body}"
    else:
        text = f"{where}: " + opener * depth + ("1" if opener == "{a: " else "") + closer * depth + "\n"
    site.write_text(text, encoding="utf-8")
    _check(site, monkeypatch, capsys)


@_FUZZ
@given(st.sampled_from(sorted(GOOD)))
def test_config_duplicate_keys_are_refused(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    text = yaml.safe_dump(GOOD) + yaml.safe_dump({key: GOOD[key]})
    site.write_text(text, encoding="utf-8")
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", str(site)]) == 78
    assert f"duplicate key {key!r}" in capsys.readouterr().err


# --- operator commands --------------------------------------------------------------------------------------


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        inner = "[" * depth + "]" * depth
    elif kind == "object":
        inner = '{"a": ' * depth + "1" + "}" * depth
    else:
        inner = '[{"mode": ' * depth + '"hold"' + "}]" * depth
    return json.dumps({"value": "X"}).replace('"X"', inner).encode()


hostile = (
    payloads
    | st.builds(_deep, st.integers(1, 2000), st.sampled_from(["list", "object", "mixed"]))
    | st.binary(min_size=MAX_PAYLOAD_BYTES - 4, max_size=MAX_PAYLOAD_BYTES + 4)
    | st.text(max_size=40).map(lambda t: json.dumps({"value": t}).encode("utf-16"))
    | st.integers(min_value=10**300, max_value=10**320).map(
        lambda n: f'{{"value": {n}, "ttl_s": {n}}}'.encode()
    )
    | json_values.map(lambda v: json.dumps({"value": v, "ttl_s": v, "ts": v, "id": v}).encode())
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([*KEYS, "get/state"]), hostile, st.booleans())
def test_any_command_ends_in_a_reply(key: str, body: bytes, retained: bool) -> None:
    out = apply_command(CFG, OperatorState(), key, body, NOW, retained=retained)
    assert out.reply.ok == (out.reply.error is None)
    if retained:
        assert not out.reply.ok
    assert json.loads(out.reply.to_json())["key"] == key


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=400)
    | json_values.map(lambda v: json.dumps({"version": 1, "settings": v}))
    | st.lists(
        json_values.map(lambda v: {"key": "import_limit_kw", "value": v, "expires_at": v}), max_size=3
    ).map(lambda s: json.dumps({"version": 1, "settings": s}))
    | st.integers(1, 3000).map(lambda d: '{"version": 1, "settings": ' + "[" * d + "]" * d + "}")
)
def test_any_state_file_is_restored_or_refused_as_damaged(text: str) -> None:
    try:
        state, dropped = load_state(text, CFG, NOW)
    except DamagedStateError as exc:
        why = str(exc)
        assert why.strip()  # the sentence the journal and `state` show
        return
    assert isinstance(state, OperatorState)
    assert all(isinstance(line, str) for line in dropped)
