"""`make demo`'s own inputs: the demo finds the repository and its bundled park from where it is installed.

The demo itself runs for minutes (README); this checks what broke it once: the package layout moved
`demo.py` one folder down and its repository path pointed into `hubctl/`.
"""

from __future__ import annotations

from pathlib import Path

from hubctl.cli import demo
from hubctl.config.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_runs_from_the_repository() -> None:
    assert demo.REPO.resolve() == REPO
    assert (demo.REPO / "pyproject.toml").is_file()


def test_the_demo_park_loads() -> None:
    scenario = load_scenario(demo.DEFAULT_SCENARIO)
    assert len(scenario.config.companies) >= 2
    assert scenario.duration_s > 0
