"""`hubctl history import` and `show`: what they print, their exit codes, and that a failed import
changes nothing."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_history_import import CONFIG, contract_csv, local, metering_rows, site_params

from hubctl.cli.main import main
from hubctl.data.history_store import FILE_NAME, read_history
from hubctl.errors import HistoryImportError

REPO = Path(__file__).resolve().parents[1]
T0 = local("2026-03-31T00:00")
T0_ISO = "2026-03-31T00:00:00+02:00"


@pytest.fixture(autouse=True)
def no_state_directory_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def write_config(tmp: Path, **extra: Any) -> Path:
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **extra}), encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["history", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, storage={"dir": str(state)})
    history = tmp_path / "history.csv"
    history.write_text(contract_csv(local("2026-03-27T00:00"), T0), encoding="utf-8")
    code, out, err = run(capsys, "import", str(history), "--config", str(config), "--t0", T0_ISO)
    assert code == 0, err
    assert f"imported {history} (contract): 4 days, 2026-03-27 to 2026-03-30" in out
    assert "(working 2, saturday 1, sunday 1, holiday 0)" in out
    assert "companies: bakery, cold, works" in out
    assert "380 quarter-hours" in out
    assert "0 of the days merged with stored days" in out
    assert f"{state / FILE_NAME}: 4 days, 2026-03-27 to 2026-03-30" in out
    assert (state / FILE_NAME).exists()

    code, out, err = run(capsys, "show", "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"history in {state / FILE_NAME} (")
    assert "kB on disk)" in lines[0]
    assert "  4 days, 2026-03-27 to 2026-03-30 (local dates, Europe/Amsterdam)" in lines
    assert "  last complete day: 2026-03-30" in lines
    assert "  380 quarter-hours measured, 0 missing between the first and the last" in lines
    assert "  days stored: working 2, saturday 1, sunday 1, holiday 0" in lines
    table = lines[lines.index("  days with at least half of the quarter-hours:") + 1 :]
    assert table[0].split() == ["working", "saturday", "sunday", "holiday"]
    assert table[1].split() == ["park", "2", "1", "1", "0"]
    assert [row.split()[0] for row in table[2:5]] == ["bakery", "cold", "works"]


def test_a_metering_export_merges_with_what_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path)
    history = tmp_path / "history.csv"
    history.write_text(contract_csv(local("2026-03-29T00:00"), T0), encoding="utf-8")
    args = ("--config", str(config), "--state-dir", str(state))
    assert run(capsys, "import", str(history), *args, "--t0", T0_ISO)[0] == 0
    export = tmp_path / "export.csv"
    export.write_text(
        metering_rows([("2026-03-30T12:00:00+02:00", "cold", 5.0, 0.0, None)], pv=False), encoding="utf-8"
    )
    code, out, err = run(capsys, "import", str(export), *args)
    assert code == 0, err
    assert "(metering): 1 day, 2026-03-30 to 2026-03-30" in out
    assert "1 of the days merged with stored days (the file's values win where it has them)" in out
    assert "note: not in the file (left unmeasured): bakery, works" in out
    stored, _ = read_history(state / FILE_NAME, site_params())
    rec = stored.days[dt.date(2026, 3, 30)]
    assert rec.load_kw[48, 1] == 20.0  # the export's value
    assert rec.slots_measured == 96  # the contract's other values stay


def test_a_scenario_brings_its_history_start_and_companies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = {
        "name": "with history",
        "start": T0_ISO,
        "timezone": "Europe/Amsterdam",
        "duration_s": 3600,
        "history": "history.csv",
        "park": {"import_limit_kw": 500, "export_limit_kw": 300},
        "companies": CONFIG["companies"],
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    (tmp_path / "history.csv").write_text(contract_csv(local("2026-03-30T00:00"), T0), encoding="utf-8")
    state = tmp_path / "state"
    code, out, err = run(capsys, "import", str(path), "--state-dir", str(state))
    assert code == 0, err
    assert "(contract): 1 day, 2026-03-30 to 2026-03-30 (working 1," in out
    # without a history file
    del scenario["history"]
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    code, _, err = run(capsys, "import", str(path), "--state-dir", str(state))
    assert code == 65
    assert "the scenario names no history file" in err


def test_a_failed_import_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, storage={"dir": str(state)})
    good = tmp_path / "good.csv"
    good.write_text(contract_csv(local("2026-03-29T00:00"), T0), encoding="utf-8")
    assert run(capsys, "import", str(good), "--config", str(config), "--t0", T0_ISO)[0] == 0
    before = snapshot(state)
    assert FILE_NAME in before
    bad = tmp_path / "bad.csv"
    lines = contract_csv(local("2026-03-30T00:00"), T0).splitlines()
    lines[5] = lines[5].replace(",", ",-", 1)  # a negative load among good rows
    lines.insert(9, lines[8])  # and a duplicate
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "import", str(bad), "--config", str(config), "--t0", T0_ISO)
    assert code == HistoryImportError.exit_code == 65
    assert out == ""
    assert f"{bad}: 2 problem(s), nothing imported" in err
    assert "  line 6: bakery.load_kw = -" in err
    assert "  line 10: t_s = " in err
    assert "repeats line 9" in err
    assert snapshot(state) == before
    # a bad config, no state directory, a contract without t0, a missing file: nothing either
    broken = tmp_path / "broken.yaml"
    broken.write_text("park: {import_limit_kw: -1}\ncompanies: []\n", encoding="utf-8")
    code, _, err = run(capsys, "import", str(good), "--config", str(broken), "--t0", T0_ISO)
    assert code == 78
    assert "park.import_limit_kw" in err
    code, _, err = run(capsys, "import", str(good), "--config", str(config))
    assert code == 2
    assert "give --t0 ISO" in err
    code, _, err = run(capsys, "import", str(tmp_path / "nothing.csv"), "--config", str(config))
    assert code == 65
    assert "cannot read" in err
    assert snapshot(state) == before


def test_without_a_state_directory_the_commands_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    good = tmp_path / "good.csv"
    good.write_text(contract_csv(local("2026-03-30T00:00"), T0), encoding="utf-8")
    for args in (("import", str(good), "--t0", T0_ISO), ("show",)):
        code, out, err = run(capsys, *args, "--config", str(config))
        assert code == 78
        assert "no state directory: set storage.dir (or service.state_dir) in the site config" in err
        assert "--state-dir DIR" in err
        assert out == ""
    # a dry run only checks the file, and says that nothing is written
    code, out, _ = run(capsys, "import", str(good), "--t0", T0_ISO, "--config", str(config), "--dry-run")
    assert code == 0
    assert "would import" in out
    assert "nothing would be written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "site.yaml"]


def test_a_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, service={"state_dir": str(state)})
    good = tmp_path / "good.csv"
    good.write_text(contract_csv(local("2026-03-30T00:00"), T0), encoding="utf-8")
    code, out, _ = run(capsys, "import", str(good), "--config", str(config), "--t0", T0_ISO, "--dry-run")
    assert code == 0
    assert f"would import {good} (contract): 1 day" in out
    assert f"nothing written to {state / FILE_NAME} (--dry-run)" in out
    assert not state.exists()


def test_show_without_a_store_and_with_a_damaged_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path)
    code, out, _ = run(capsys, "show", "--config", str(config), "--state-dir", str(state))
    assert code == 0
    assert f"no history in {state} yet" in out
    state.mkdir()
    (state / FILE_NAME).write_bytes(b"garbage" * 100)
    before = snapshot(state)
    code, _, err = run(capsys, "show", "--config", str(config), "--state-dir", str(state))
    assert code == 1
    assert "damaged (not an SQLite file); the service moves it aside at its next start" in err
    assert snapshot(state) == before
    # STATE_DIRECTORY is the service's last resort, and the commands'
    monkeypatch.setenv("STATE_DIRECTORY", f"{state}:/elsewhere")
    code, _, err = run(capsys, "show", "--config", str(config))
    assert code == 1
    assert f"{state / FILE_NAME}: damaged" in err


def test_the_entry_point_documents_the_clear_sky_estimate_and_exits_65_for_a_bad_file(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "history", "import", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "clear-sky estimate" in helped.stdout
    assert "over-estimates the load on cloudy days" in helped.stdout
    assert "errs on the side of the import caps" in helped.stdout
    config = write_config(tmp_path, storage={"dir": str(tmp_path / "state")})
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,company,import_w,export_kwh\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "history", "import", str(bad), "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 65
    assert "column 'import_w': wrong unit 'w', expected import_kwh" in done.stderr
    assert not (tmp_path / "state").exists()
