"""Site configuration: validation names the field, check-config exits 78, the schema is generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubctl.cli.main import main
from hubctl.config.scenario import load_scenario
from hubctl.config.site import load_config, parse_config
from hubctl.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def minimal() -> dict[str, Any]:
    return {
        "park": {"import_limit_kw": 900, "export_limit_kw": 500},
        "companies": [
            {"id": "bakery", "pv": {"peak_kw": 300}},
            {
                "id": "cold-store",
                "battery": {"capacity_kwh": 400, "max_charge_kw": 200, "max_discharge_kw": 200},
            },
        ],
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return exc.value.problems


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.site.timezone == "Europe/Amsterdam"
    assert cfg.sharing.key == "pro_rata"
    assert cfg.control.cycle_s == 1.0
    assert cfg.companies[1].battery is not None
    assert cfg.companies[1].battery.min_soc_pct == 5.0


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (lambda d: d["park"].update(import_limit_kw=-5), "park.import_limit_kw", "greater than or equal"),
        (lambda d: d["companies"][0].update(id="Bakery!"), "companies.0.id", "pattern"),
        (lambda d: d["companies"][0].update(colour="red"), "companies.0.colour", "Extra inputs"),
        (
            lambda d: d["park"].update(windows=[{"start": "16:00", "end": "25:00", "import_limit_kw": 1}]),
            "park.windows.0.end",
            "HH:MM",
        ),
        (
            lambda d: d["park"].update(windows=[{"start": "16:00", "end": "20:00"}]),
            "park.windows.0",
            "must name",
        ),
        (
            lambda d: d["companies"][1]["battery"].update(min_soc_pct=90, max_soc_pct=80),
            "companies.1.battery",
            "min_soc_pct",
        ),
        (lambda d: d.update(sharing={"key": "static"}), "sharing", "needs shares"),
        (
            lambda d: d.update(sharing={"key": "static", "shares": {"bakery": 0.7, "cold-store": 0.5}}),
            "sharing",
            "sum",
        ),
        (
            lambda d: d.update(sharing={"key": "priority", "order": ["nobody"]}),
            "(top level)",
            "unknown companies",
        ),
        (lambda d: d["companies"].append({"id": "bakery"}), "(top level)", "unique"),
        (lambda d: d.update(site={"timezone": "Mars/Olympus"}), "site.timezone", "unknown time zone"),
    ],
)
def test_bad_field_is_named(mutate: Any, path: str, words: str) -> None:
    data = minimal()
    mutate(data)
    lines = problems(data)
    assert any(line.startswith(path + ":") and words in line for line in lines), lines


def test_every_problem_is_listed_at_once() -> None:
    data = minimal()
    data["park"]["import_limit_kw"] = "lots"
    data["companies"][0]["pv"]["peak_kw"] = 0
    data["control"] = {"cycle_s": 0}
    lines = problems(data)
    assert {line.split(":")[0] for line in lines} >= {
        "park.import_limit_kw",
        "companies.0.pv.peak_kw",
        "control.cycle_s",
    }


def test_check_config_exits_78_and_names_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = minimal()
    data["park"]["export_limit_kw"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "park.export_limit_kw" in err


def test_check_config_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("park: {import_limit_kw: 5\ncompanies: [")
    assert main(["check-config", str(bad)]) == 78
    assert "not valid YAML" in capsys.readouterr().err


def test_check_config_missing_file(tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 78


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert main(["check-config", str(good)]) == 0
    assert "2 companies" in capsys.readouterr().out


def test_schema_is_json_schema_of_the_site() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "schema"], capture_output=True, text=True, check=True
    ).stdout
    schema = json.loads(out)
    assert schema["title"] == "SiteConfig"
    assert {"park", "companies", "sharing", "control"} <= set(schema["properties"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_configs_are_valid(path: Path) -> None:
    load_config(path)


def test_scenario_converts_with_contract_defaults(tmp_path: Path) -> None:
    scenario = {
        "name": "Tiny Park",
        "start": "2026-06-22T00:00:00+02:00",
        "timezone": "Europe/Amsterdam",
        "duration_s": 3600,
        "profiles": "profiles.csv",
        "park": {
            "import_limit_kw": 100,
            "windows": [{"start": "22:00", "end": "02:00", "import_limit_kw": 50}],
        },
        "companies": [
            {
                "id": "a",
                "battery": {"capacity_kwh": 10, "max_charge_kw": 5, "max_discharge_kw": 5, "soc_pct": 50},
            }
        ],
    }
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    sc = load_scenario(tmp_path / "scenario.yaml")
    bat = sc.config.companies[0].battery
    assert bat is not None
    # SCENARIOS.md's physics defaults, not a gateway's
    assert (bat.min_soc_pct, bat.max_soc_pct, bat.efficiency) == (0.0, 100.0, 1.0)
    assert sc.config.site.id == "tiny-park"
    assert sc.steps == 3600


def test_scenario_without_offset_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(
        yaml.safe_dump(
            {"start": "2026-06-22T00:00:00", "duration_s": 10, "park": {}, "companies": [{"id": "a"}]}
        )
    )
    with pytest.raises(ConfigError, match="UTC offset"):
        load_scenario(tmp_path / "scenario.yaml")


def test_pv_devices_share_their_company_peak_evenly() -> None:
    data = minimal()
    data["devices"] = [
        {"id": f"bakery-pv{k}", "role": "pv", "company": "bakery", "driver": "huawei-sun2000",
         "modbus": {"host": "127.0.0.1", "port": 5020 + k}}
        for k in range(3)
    ] + [
        {"id": "cold-store-grid", "role": "grid_meter", "company": "cold-store", "driver": "sunspec",
         "modbus": {"host": "127.0.0.1"}},
    ]  # fmt: skip
    cfg = parse_config(data)
    assert cfg.pv_rated_kw() == {"bakery-pv0": 100.0, "bakery-pv1": 100.0, "bakery-pv2": 100.0}
