"""The systemd unit: `systemd-analyze verify` and `security --offline=yes` (exposure <= 2.0).

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


def _local_unit(tmp_path: Path) -> Path:
    hubctl = Path(sys.executable).with_name("hubctl")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/hubctl/.venv/bin/hubctl", str(hubctl))
    path = tmp_path / "hubctl.service"
    path.write_text(text, encoding="utf-8")
    return path


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
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(_local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "hubctl.service" not in result.stderr, result.stderr  # no warnings about the unit


@needs_analyze
def test_systemd_analyze_security_exposure_at_most_2(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", str(_local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for hubctl\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0
