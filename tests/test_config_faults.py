"""Bad configs of every kind (issue #13 item 11): exit 78 naming the problem, never a traceback, and
`hubctl check-config` rejects all that `hubctl run` rejects.

The file-level faults (binary, Latin-1, nested 5,000 deep, duplicate keys, booleans for numbers)
go through `hubctl check-config` and `hubctl run` as subprocesses, the way an installer and the
unit meet them: a traceback would be exit 1, which systemd restarts every 2 s for ever. The start
checks (an unknown driver, an `http://` broker URL, MQTT devices without a broker, a missing TLS
file, a state directory that is a file) passed `check-config` and failed at start; each is now
refused by both, in the same words. `tests/test_fuzz.py` throws hypothesis at the same loader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import REPO

from hubctl.cli.main import main
from hubctl.errors import EX_CONFIG

if TYPE_CHECKING:
    from pathlib import Path

GOOD = "park: {import_limit_kw: 900, export_limit_kw: 200}\ncompanies: [{id: alpha}]\n"
_SETTINGS_ENV = ("STATE_DIRECTORY", "HUBCTL_INFLUX_URL", "HUBCTL_MQTT_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC")


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}, **extra}


def _hubctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubctl.cli", *args],
        cwd=REPO,
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


FILE_FAULTS: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)) * 8, "a binary file (a NUL byte at offset 0)"),
    "latin-1": (("# café au lait\n" + GOOD).encode("latin-1"), "line 1: not UTF-8 text (byte 0xe9"),
    "nested 5000 deep (flow)": (b"park: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper than 64"),
    "nested 200 deep (block)": (
        ("park:\n" + "".join("  " * i + "-\n" for i in range(1, 200))).encode(),
        "nested deeper than 64",
    ),
    "duplicate key": (
        b"park:\n  export_limit_kw: 200\n  export_limit_kw: 20000\ncompanies: [{id: alpha}]\n",
        "line 3, column 3: not valid YAML: duplicate key 'export_limit_kw' (first on line 2)",
    ),
    "duplicate section": (
        (GOOD + "park: {import_limit_kw: 5}\n").encode(),
        "duplicate key 'park'",
    ),
    "no is not 0 kW": (
        b"park: {import_limit_kw: 900, export_limit_kw: no}\ncompanies: [{id: alpha}]\n",
        "park.export_limit_kw: expected a number, got the boolean false",
    ),
    "true is not 1 kW": (
        b"park: {import_limit_kw: true}\ncompanies: [{id: alpha}]\n",
        "park.import_limit_kw: expected a number, got the boolean true",
    ),
    "on is not a port": (
        (
            GOOD + "devices:\n- {id: m, company: alpha, role: grid_meter, driver: eastron-sdm630,\n"
            "   modbus: {host: 192.0.2.1, port: on}}\n"
        ).encode(),
        "devices.0.modbus.port: expected a number, got the boolean true",
    ),
    "alias bomb": (
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode()
            for i in range(8)
        ),
        "more than 1000000 values (through aliases)",
    ),
}


@pytest.mark.parametrize("name", sorted(FILE_FAULTS))
def test_a_damaged_file_is_exit_78_naming_the_problem(tmp_path: Path, name: str) -> None:
    data, words = FILE_FAULTS[name]
    path = tmp_path / "site.yaml"
    path.write_bytes(data)
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = _hubctl(*command)
        assert result.returncode == EX_CONFIG, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        assert words in result.stderr, (command, result.stderr[-2000:])


def test_a_merge_key_may_still_be_overridden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`<<` is YAML's way to reuse a block: its keys are not duplicates of the mapping's own."""
    path = tmp_path / "site.yaml"
    path.write_text(
        "x-caps: &caps {import_limit_kw: 900, export_limit_kw: 200}\n"
        "park: {<<: *caps, export_limit_kw: 150}\ncompanies: [{id: alpha}]\n",
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == EX_CONFIG  # x-caps: not a field, but no duplicate
    err = capsys.readouterr().err
    assert "x-caps: Extra inputs" in err
    assert "duplicate" not in err


def _site(tmp: Path, **sections: Any) -> Path:
    path = tmp / "site.yaml"
    data = {"park": {"import_limit_kw": 100}, "companies": [{"id": "alpha"}], **sections}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _meter(driver: str = "eastron-sdm630", **extra: Any) -> dict[str, Any]:
    device: dict[str, Any] = {"id": "m1", "company": "alpha", "role": "grid_meter", "driver": driver}
    if driver == "mqtt":
        device["mqtt"] = {"points": {"active_power_kw": {"topic": "p1/alpha/power"}}}
    else:
        device["modbus"] = {"host": "127.0.0.1", "port": 1}
    return {**device, **extra}


def _start_cases(tmp: Path) -> dict[str, tuple[dict[str, Any], dict[str, str], str]]:
    """name: (config sections, environment, what both refusals name)."""
    a_file = tmp / "a-file"
    a_file.write_text("", encoding="utf-8")
    return {
        "unknown driver": (
            {"devices": [_meter("eastron-sdm999")]},
            {},
            "devices.m1: m1: no map 'eastron-sdm999' in",
        ),
        "http:// broker URL": (
            {"mqtt": {"url": "http://127.0.0.1:1883"}},
            {},
            "mqtt.url: not an MQTT broker URL: 'http://127.0.0.1:1883'",
        ),
        "http:// broker URL from the environment": (
            {},
            {"HUBCTL_MQTT_URL": "http://127.0.0.1:1883"},
            "$HUBCTL_MQTT_URL: not an MQTT broker URL",
        ),
        "MQTT devices without a broker": (
            {"devices": [_meter("mqtt")]},
            {},
            "devices: m1 (driver mqtt) need a broker",
        ),
        "missing TLS certificate file": (
            {"mqtt": {"url": "mqtts://127.0.0.1:8883", "ca_file": str(tmp / "no-ca.crt")}},
            {},
            f"mqtt.ca_file: {tmp / 'no-ca.crt'}: No such file or directory",
        ),
        "state directory that is a file": (
            {"storage": {"dir": str(a_file)}},
            {},
            f"storage.dir: {a_file} is a file, not a directory",
        ),
        "state directory inside a file": (
            {"storage": {"dir": str(a_file / "state")}},
            {},
            f"storage.dir: {a_file / 'state'}",
        ),
    }


START_CASES = [
    "unknown driver",
    "http:// broker URL",
    "http:// broker URL from the environment",
    "MQTT devices without a broker",
    "missing TLS certificate file",
    "state directory that is a file",
    "state directory inside a file",
]


@pytest.mark.parametrize("name", START_CASES)
def test_check_config_rejects_what_run_rejects(tmp_path: Path, name: str) -> None:
    sections, env, words = _start_cases(tmp_path)[name]
    path = _site(tmp_path, **sections)
    check = _hubctl("check-config", str(path), env=_env(**env))
    run = _hubctl("run", "--config", str(path), env=_env(**env))
    for result in (check, run):
        assert result.returncode == EX_CONFIG, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert words in result.stderr, result.stderr[-2000:]


def test_check_config_reads_the_units_environment_file(tmp_path: Path) -> None:
    """The broker of MQTT devices is in the environment file: with it the config is fine."""
    path = _site(tmp_path, devices=[_meter("mqtt")])
    env_file = tmp_path / "hubctl.env"
    env_file.write_text("# the unit's\nHUBCTL_MQTT_URL=mqtt://127.0.0.1:1883\nHUBCTL_MQTT_PASSWORD='x y'\n")
    without = _hubctl("check-config", str(path))
    assert without.returncode == EX_CONFIG
    assert "give --env-file FILE to judge with it" in without.stderr  # where the broker may be
    result = _hubctl("check-config", "--env-file", str(env_file), str(path))
    assert result.returncode == 0, result.stderr
    assert "ok: site park" in result.stdout
    env_file.write_text("HUBCTL_MQTT_URL mqtt://127.0.0.1\n")
    result = _hubctl("check-config", "--env-file", str(env_file), str(path))
    assert result.returncode == EX_CONFIG
    assert "line 1: not KEY=VALUE" in result.stderr


def test_check_config_creates_no_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state" / "hubctl"
    path = _site(tmp_path, storage={"dir": str(state)})
    assert main(["check-config", str(path)]) == 0
    assert not state.exists()
