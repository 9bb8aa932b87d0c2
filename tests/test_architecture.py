"""Dependency direction: the pure core imports nothing from the I/O shell, no clock, no logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "hubctl/control.py",
    "hubctl/plan.py",
    "hubctl/forecast.py",
    "hubctl/limits.py",
    "hubctl/solar.py",
    "hubctl/sharing.py",
    "hubctl/quarters.py",
    "hubctl/metrics.py",
    "hubctl/registers.py",
    "hubctl/history_import.py",
    "simulators/physics.py",
]
FORBIDDEN = {
    "asyncio",
    "logging",
    "time",
    "socket",
    "subprocess",
    "threading",
    "pymodbus",
    "aiomqtt",
    "paho",
    "influxdb_client",
    "apscheduler",
    "sqlite3",
    "rich",
    "random",
}
SHELL = {
    "hubctl.sim",
    "hubctl.cli",
    "hubctl.modbus",
    "hubctl.devices",
    "hubctl.mqtt_devices",
    "hubctl.sunspec",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_is_pure(module: str) -> None:
    names = imported_modules(ROOT / module)
    top = {n.split(".")[0] for n in names}
    assert not top & FORBIDDEN, f"{module} imports {sorted(top & FORBIDDEN)}"
    assert not names & SHELL, f"{module} imports the shell: {sorted(names & SHELL)}"


def test_no_clock_reads_in_the_control_core() -> None:
    for module in ("hubctl/control.py", "hubctl/plan.py", "hubctl/forecast.py"):
        text = (ROOT / module).read_text(encoding="utf-8")
        for call in ("datetime.now", "time.time", "monotonic(", "date.today"):
            assert call not in text, f"{module} reads the clock ({call})"
