"""The systemd units: `systemd-analyze verify` and `security --offline=yes` (exposure <= 2.0), for
`hubctl.service` and for an instance of the per-connection template `hubctl@.service`, which must
differ from it only where the connection's name goes.

Skipped where systemd-analyze is not installed (Debian: apt-get install systemd). The unit's
ExecStart names /opt/hubctl; verify needs an existing binary, so a copy pointing at this
checkout's hubctl is checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "hubctl.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


TEMPLATE = REPO / "deploy" / "hubctl@.service"
UNITS = {"hubctl.service": UNIT, "hubctl@north.service": TEMPLATE}  # installed name -> file


def _local_unit(tmp_path: Path, name: str = "hubctl.service") -> Path:
    hubctl = Path(sys.executable).with_name("hubctl")
    text = UNITS[name].read_text(encoding="utf-8").replace("/opt/hubctl/.venv/bin/hubctl", str(hubctl))
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _settings(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"]


def test_the_template_is_the_unit_with_the_connection_s_name() -> None:
    unit, template = _settings(UNIT), _settings(TEMPLATE)
    differ = {line for line in template if "%i" in line}
    assert [line for line in template if line not in differ] == [
        line for line in unit if not line.startswith(("Description=", "ExecStart=", "StateDirectory="))
    ]
    assert "ExecStart=/opt/hubctl/.venv/bin/hubctl run --config /etc/hubctl/%i.yaml" in differ
    assert "StateDirectory=hubctl/%i" in differ
    assert "EnvironmentFile=-/etc/hubctl/%i.env" in differ


def test_unit_has_what_the_service_relies_on() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=hubctl",
        "DynamicUser=yes",
        "EnvironmentFile=-/etc/hubctl/hubctl.env",
        "TimeoutStopSec=5s",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    assert "WatchdogSec=" in text


@needs_analyze
@pytest.mark.parametrize("name", list(UNITS))
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(_local_unit(tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert name not in result.stderr, result.stderr  # no warnings about the unit


@needs_analyze
@pytest.mark.parametrize("name", list(UNITS))
def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", str(_local_unit(tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0
