"""No silent no-ops: a setting of `hubctl run` that is set but could not take effect is refused at
start (exit 78, naming it and what to set), never a warning and a service that quietly does less
(`hubctl.config.resolve.gateway_problems`; docs/influxdb.md, "In the service").

Each case runs the real `hubctl run` (or `hubctl check-config`) as a subprocess on a small site
config without devices. A refusal comes before anything is opened, so a case that is not refused
runs on and fails by the subprocess timeout. The one case that must work, an InfluxDB URL with a
state directory, is run until the service has its spool and has tried the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import REPO, free_port

from hubctl.errors import EX_CONFIG

if TYPE_CHECKING:
    from pathlib import Path

BASE: dict[str, Any] = {"park": {"import_limit_kw": 100}, "companies": [{"id": "alpha"}]}
# the variables the service reads settings from: none of them leaks in from the test's environment
_SETTINGS_ENV = (
    "STATE_DIRECTORY",
    "HUBCTL_INFLUX_URL",
    "HUBCTL_MQTT_URL",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "HUBCTL_WEB_MANAGER_TOKEN",
)
_TOKEN = "a-park-manager-token-of-some-length"


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}, **extra}


def _config(tmp: Path, **sections: Any) -> Path:
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}), encoding="utf-8")
    return path


def _hubctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubctl.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _nowhere() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def _cases(tmp: Path) -> dict[str, tuple[dict[str, Any], list[str], dict[str, str], list[str]]]:
    """name: (config sections, extra `hubctl run` arguments, environment, what the refusal names)."""
    url = _nowhere()
    state = str(tmp / "state")
    needs_dir = ["set storage.dir, service.state_dir or $STATE_DIRECTORY"]
    a_file = tmp / "a-file"
    a_file.write_text("", encoding="utf-8")
    return {
        "--influx-url without a state directory": (
            {},
            ["--influx-url", url],
            {},
            ["--influx-url: InfluxDB is written from the spool in the state directory", *needs_dir],
        ),
        "$HUBCTL_INFLUX_URL without a state directory": (
            {},
            [],
            {"HUBCTL_INFLUX_URL": url},
            ["$HUBCTL_INFLUX_URL: InfluxDB is written", *needs_dir],
        ),
        "storage.influx.url without a state directory": (
            {"storage": {"influx": {"url": url}}},
            [],
            {},
            ["storage.influx.url: InfluxDB is written", *needs_dir],
        ),
        "service.influx_url without a state directory": (
            {"service": {"influx_url": url}},
            [],
            {},
            ["service.influx_url: InfluxDB is written", *needs_dir],
        ),
        "storage.influx without a URL": (
            {"storage": {"dir": state, "influx": {"bucket": "park"}}},
            [],
            {},
            ["storage.influx: no URL to forward to", "storage.influx.url"],
        ),
        "storage.influx.token_env naming an unset variable": (
            {"storage": {"dir": state, "influx": {"url": url, "token_env": "NO_SUCH_TOKEN_VARIABLE"}}},
            [],
            {},
            ["storage.influx.token_env: $NO_SUCH_TOKEN_VARIABLE is not set"],
        ),
        "spool bounds without a state directory": (
            {"storage": {"spool_max_mb": 10, "drop_policy": "newest"}},
            [],
            {},
            ["storage.spool_max_mb: there is no spool", "storage.drop_policy: there is no spool", *needs_dir],
        ),
        "an unwritable state directory": (
            {"storage": {"dir": str(a_file / "state")}},
            [],
            {},
            [f"storage.dir: {a_file / 'state'} is not writable"],
        ),
        "$STATE_DIRECTORY unwritable": (
            {},
            [],
            {"STATE_DIRECTORY": str(a_file / "state")},
            ["$STATE_DIRECTORY: ", "is not writable"],
        ),
        "service.state_dir beside a different storage.dir": (
            {"storage": {"dir": state}, "service": {"state_dir": str(tmp / "other")}},
            [],
            {},
            [f"service.state_dir: {tmp / 'other'} is not used, storage.dir ({state}) is"],
        ),
        "service.influx_url beside a different storage.influx.url": (
            {"storage": {"dir": state, "influx": {"url": url}}, "service": {"influx_url": _nowhere()}},
            [],
            {},
            ["service.influx_url: ", f"is not used, storage.influx.url ({url}) is"],
        ),
        "an mqtt section without a broker": (
            {"mqtt": {"topic_prefix": "park"}},
            [],
            {},
            ["mqtt: no broker for the operator API", "mqtt.url", "--mqtt-url"],
        ),
        "mqtt.username_env naming an unset variable": (
            {"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "username_env": "NO_SUCH_USER_VARIABLE"}},
            [],
            {},
            ["mqtt.username_env: $NO_SUCH_USER_VARIABLE is not set"],
        ),
        # the park page (hubctl.web, docs/web.md): a page nobody could open, or tokens without effect
        "a web section without a manager token": (
            {"web": {}},
            [],
            {},
            ["web: no park-manager token", "$HUBCTL_WEB_MANAGER_TOKEN", "web.manager_token_sha256"],
        ),
        "--web without a manager token": (
            {},
            ["--web", f"127.0.0.1:{free_port()}"],
            {},
            ["web: no park-manager token"],
        ),
        "a web token shorter than 16 characters": (
            {"web": {}},
            [],
            {"HUBCTL_WEB_MANAGER_TOKEN": "short"},
            ["$HUBCTL_WEB_MANAGER_TOKEN: shorter than 16 characters"],
        ),
        "a manager token hashed in the config and in the environment": (
            {"web": {"manager_token_sha256": "0" * 64}},
            [],
            {"HUBCTL_WEB_MANAGER_TOKEN": _TOKEN},
            ["web.manager_token_sha256: $HUBCTL_WEB_MANAGER_TOKEN is set too"],
        ),
        "a web token while the page is off": (
            {},
            [],
            {"HUBCTL_WEB_MANAGER_TOKEN": _TOKEN},
            ["$HUBCTL_WEB_MANAGER_TOKEN: set, but the park page is off", "web:", "--web"],
        ),
        "a company token variable naming no company": (
            {"web": {}},
            [],
            {"HUBCTL_WEB_MANAGER_TOKEN": _TOKEN, "HUBCTL_WEB_COMPANY_NOBODY_TOKEN": _TOKEN + "-nobody"},
            ["$HUBCTL_WEB_COMPANY_NOBODY_TOKEN: names no company"],
        ),
        "one token for two roles": (
            {"web": {}},
            [],
            {"HUBCTL_WEB_MANAGER_TOKEN": _TOKEN, "HUBCTL_WEB_COMPANY_ALPHA_TOKEN": _TOKEN},
            ["web: park manager and company alpha have the same token"],
        ),
    }


CASES = [
    "--influx-url without a state directory",
    "$HUBCTL_INFLUX_URL without a state directory",
    "storage.influx.url without a state directory",
    "service.influx_url without a state directory",
    "storage.influx without a URL",
    "storage.influx.token_env naming an unset variable",
    "spool bounds without a state directory",
    "an unwritable state directory",
    "$STATE_DIRECTORY unwritable",
    "service.state_dir beside a different storage.dir",
    "service.influx_url beside a different storage.influx.url",
    "an mqtt section without a broker",
    "mqtt.username_env naming an unset variable",
    "a web section without a manager token",
    "--web without a manager token",
    "a web token shorter than 16 characters",
    "a manager token hashed in the config and in the environment",
    "a web token while the page is off",
    "a company token variable naming no company",
    "one token for two roles",
]


@pytest.mark.parametrize("case", CASES)
def test_hubctl_run_refuses_a_setting_that_would_not_take_effect(tmp_path: Path, case: str) -> None:
    sections, args, env, named = _cases(tmp_path)[case]
    result = _hubctl("run", "--config", str(_config(tmp_path, **sections)), *args, env=_env(**env))
    assert result.returncode == EX_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    for text in named:
        assert text in result.stderr, (text, result.stderr)
    assert not (tmp_path / "state" / "spool.sqlite").exists()  # refused before anything was opened


def test_every_case_is_run(tmp_path: Path) -> None:
    assert sorted(CASES) == sorted(_cases(tmp_path))


@pytest.mark.parametrize(
    ("sharing", "named"),
    [
        ({"key": "pro_rata", "shares": {"alpha": 1.0}}, "shares are used by the static key only"),
        ({"key": "equal", "order": ["alpha"]}, "order is used by the priority key only"),
    ],
)
def test_check_config_refuses_sharing_fields_the_key_ignores(
    tmp_path: Path, sharing: dict[str, Any], named: str
) -> None:
    result = _hubctl("check-config", str(_config(tmp_path, sharing=sharing)), env=_env())
    assert result.returncode == EX_CONFIG, result.stderr
    assert "sharing" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_an_influx_url_with_a_state_directory_spools_and_tries_the_database(tmp_path: Path) -> None:
    """The refused case made right ($STATE_DIRECTORY, as systemd's StateDirectory= sets it): the
    service starts, keeps its spool there and tries the database (nothing listens: it says so)."""
    url = _nowhere()
    state = tmp_path / "state"
    log = tmp_path / "service.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hubctl.cli",
                "run",
                "--config",
                str(_config(tmp_path)),
                "--influx-url",
                url,
            ],
            cwd=REPO,
            env=_env(STATE_DIRECTORY=str(state)),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while f"InfluxDB at {url} unavailable" not in log.read_text(encoding="utf-8"):
            assert proc.poll() is None, log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    text = log.read_text(encoding="utf-8")
    assert f"forwarding the spool {state / 'spool.sqlite'} to {url}" in text
    assert (state / "spool.sqlite").is_file()
    assert "Traceback" not in text
