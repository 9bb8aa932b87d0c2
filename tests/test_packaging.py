"""A non-editable install carries the register maps: `pip install .` on a gateway finds every map.

The maps live in the top-level drivers/ and ship as the package `hubctl.drivers` (the symlink
hubctl/drivers -> ../drivers). This builds the wheel the way pip does, installs it into a private
folder and loads every map from there, not from the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPS = sorted(p.name for p in (REPO / "drivers").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("hubctl-*.whl")
    return built


def test_the_wheel_holds_every_register_map(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert MAPS, "no maps in drivers/"
    assert sorted(n.removeprefix("hubctl/drivers/") for n in names if n.endswith(".yaml")) == MAPS


def test_an_installed_hubctl_loads_every_map_from_the_package(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import sys, hubctl.drivers as d\n"
        "from hubctl.codec.regmap import load_map\n"
        "print(d.DRIVERS_DIR)\n"
        "for p in sorted(d.DRIVERS_DIR.glob('*.yaml')):\n"
        "    m = load_map(p)\n"
        "    print(p.name, len(m.points))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert Path(lines[0]).resolve().is_relative_to(target.resolve()), lines[0]
    loaded = [line.split()[0] for line in lines[1:]]
    assert loaded == MAPS
    assert all(int(line.split()[1]) > 0 for line in lines[1:])
