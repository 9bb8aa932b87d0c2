"""History files: the contract's history.csv and a metering company's export, every bad input named."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from hubctl.config.scenario import load_scenario
from hubctl.config.site import parse_config
from hubctl.core.history import SLOTS, DayRecord, DayType
from hubctl.core.solar import clear_sky_shape
from hubctl.core.types import Params
from hubctl.data.history_common import merge_day
from hubctl.data.history_contract import parse_contract
from hubctl.data.history_import import detect_format, parse_history
from hubctl.data.history_metering import parse_metering
from hubctl.errors import HistoryImportError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

AMS = ZoneInfo("Europe/Amsterdam")
CONFIG: dict[str, Any] = {
    "site": {"id": "de-hoek", "timezone": "Europe/Amsterdam", "location": {"lat": 52.09, "lon": 5.12}},
    "park": {"import_limit_kw": 500, "export_limit_kw": 300},
    "companies": [
        {"id": "bakery", "pv": {"peak_kw": 100}},
        {"id": "cold", "battery": {"capacity_kwh": 100, "max_charge_kw": 50, "max_discharge_kw": 50}},
        {"id": "works", "pv": {"peak_kw": 50}},
    ],
    "control": {"pv_clear_sky_ratio": 0.8},
}
IDS = ("bakery", "cold", "works")


def site_params(**control: Any) -> Params:
    data = {**CONFIG, "control": {**CONFIG["control"], **control}}
    return Params.from_config(parse_config(data))


PARAMS = site_params()


def local(text: str) -> float:
    """UTC seconds of a local Amsterdam wall-clock time (the first one on the autumn day)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=AMS).timestamp()


def values(q: int) -> dict[str, float]:
    """Deterministic quarter-hour values for a UTC quarter number."""
    return {
        "bakery.load_kw": 20 + q % 7,
        "bakery.pv_kw": float(q % 11),
        "cold.load_kw": 30 + q % 5,
        "cold.pv_kw": 9.0,  # cold has no PV in the config: ignored
        "works.load_kw": 5 + q % 3,
        "works.pv_kw": float(q % 4),
    }


COLUMNS = ["bakery.load_kw", "bakery.pv_kw", "cold.load_kw", "cold.pv_kw", "works.load_kw", "works.pv_kw"]


def contract_csv(start: float, t0: float, columns: Sequence[str] = COLUMNS) -> str:
    lines = ["t_s," + ",".join(columns)]
    t = start
    while t < t0:
        v = values(round(t // 900))
        lines.append(f"{t - t0:.0f}," + ",".join(f"{v[c]:g}" for c in columns))
        t += 900
    return "\n".join(lines) + "\n"


# --- the contract ------------------------------------------------------------------------------------------


def test_a_contract_file_across_the_spring_dst_day_round_trips() -> None:
    start, t0 = local("2026-03-27T00:00"), local("2026-03-31T00:00")
    got = parse_contract(contract_csv(start, t0), t0, PARAMS)
    assert got.format == "contract"
    assert [r.date for r in got.records] == [dt.date(2026, 3, d) for d in (27, 28, 29, 30)]
    assert [r.day_type for r in got.records] == [
        DayType.WORKING,
        DayType.SATURDAY,
        DayType.SUNDAY,
        DayType.WORKING,
    ]
    assert got.companies == IDS
    assert got.quarters == (t0 - start) / 900 == 4 * 96 - 4
    assert got.unmeasured == 0
    by_date = {r.date: r for r in got.records}
    t = start
    while t < t0:
        q = round(t // 900)
        moment = dt.datetime.fromtimestamp(t, AMS)
        rec = by_date[moment.date()]
        slot = moment.hour * 4 + moment.minute // 15
        v = values(q)
        assert list(rec.load_kw[slot]) == [v["bakery.load_kw"], v["cold.load_kw"], v["works.load_kw"]]
        assert list(rec.pv_kw[slot]) == [v["bakery.pv_kw"], 0.0, v["works.pv_kw"]]  # cold: no PV
        t += 900
    spring = by_date[dt.date(2026, 3, 29)]
    assert spring.slots_measured == 92
    assert np.isnan(spring.load_kw[8:12]).all()  # 02:00-03:00 does not exist
    assert all(np.isnan(r.peak_kw).all() for r in got.records)
    assert all(not r.load_kw.flags.writeable for r in got.records)


def test_the_autumn_dst_days_repeated_hour_is_averaged() -> None:
    start, t0 = local("2026-10-24T00:00"), local("2026-10-27T00:00")
    got = parse_contract(contract_csv(start, t0), t0, PARAMS)
    assert got.quarters == 3 * 96 + 4
    autumn = next(r for r in got.records if r.date == dt.date(2026, 10, 25))
    assert autumn.day_type is DayType.SUNDAY
    assert autumn.slots_measured == 96
    first_0200 = local("2026-10-25T02:00")  # the first 02:00 (+02:00); the second one is an hour later
    for k in range(4):
        q1 = round(first_0200 // 900) + k
        q2 = q1 + 4
        expected = (values(q1)["bakery.load_kw"] + values(q2)["bakery.load_kw"]) / 2
        assert autumn.load_kw[8 + k, 0] == pytest.approx(expected)


def test_day_types_follow_the_configured_calendar() -> None:
    start, t0 = local("2026-04-26T00:00"), local("2026-04-28T00:00")
    got = parse_contract(contract_csv(start, t0), t0, PARAMS)
    assert [r.day_type for r in got.records] == [DayType.SUNDAY, DayType.HOLIDAY]  # King's Day
    closed = site_params(holidays_country=None, closed_dates=["2026-04-26"])
    got = parse_contract(contract_csv(start, t0), t0, closed)
    assert [r.day_type for r in got.records] == [DayType.HOLIDAY, DayType.WORKING]


def test_the_shared_march_scenario_history_imports() -> None:
    here = Path(__file__).resolve().parents[2] / "shared" / "scenarios-extra" / "march-with-history"
    if not (here / "history.csv").exists():
        pytest.skip("../shared/scenarios-extra is not here")
    scenario = load_scenario(here / "scenario.yaml")
    params = Params.from_config(scenario.config)
    got = parse_contract((here / "history.csv").read_text(encoding="utf-8"), scenario.start_utc, params)
    history = params.empty_history().with_records(got.records)
    assert sum(history.days_by_type().values()) == 14
    assert got.records[-1].date == dt.date(2026, 3, 17)


T0 = local("2026-06-22T00:00")
START = local("2026-06-21T23:00")  # four quarters before t0


def good_contract() -> list[str]:
    return contract_csv(START, T0).splitlines()


def replace_line(lines: list[str], k: int, text: str) -> str:
    out = list(lines)
    out[k] = text
    return "\n".join(out) + "\n"


def cell(lines: list[str], k: int, column: str, value: str) -> str:
    header = lines[0].split(",")
    cells = lines[k].split(",")
    cells[header.index(column)] = value
    return replace_line(lines, k, ",".join(cells))


BAD_CONTRACTS: list[tuple[str, Callable[[], str], str]] = [
    ("empty", lambda: "", "empty file: no header"),
    ("blank lines only", lambda: "\n\n  \n", "empty file: no header"),
    ("header only", lambda: good_contract()[0] + "\n", "empty file: a header (line 1) but no rows"),
    (
        "load in W",
        lambda: replace_line(
            good_contract(), 0, good_contract()[0].replace("bakery.load_kw", "bakery.load_w")
        ),
        "line 1: column 'bakery.load_w': wrong unit 'w', expected bakery.load_kw",
    ),
    (
        "pv in MW",
        lambda: replace_line(good_contract(), 0, good_contract()[0].replace("works.pv_kw", "works.pv_mw")),
        "line 1: column 'works.pv_mw': wrong unit 'mw', expected works.pv_kw",
    ),
    (
        "energy instead of power",
        lambda: replace_line(good_contract(), 0, good_contract()[0].replace("cold.load_kw", "cold.load_kwh")),
        "line 1: column 'cold.load_kwh': wrong unit 'kwh', expected cold.load_kw",
    ),
    (
        "unknown company",
        lambda: "\n".join(
            [f"{line},1" if k else f"{line},ghost.load_kw" for k, line in enumerate(good_contract())]
        ),
        "line 1: unknown company 'ghost': not in the site config (bakery, cold, works)",
    ),
    (
        "config company missing",
        lambda: contract_csv(START, T0, [c for c in COLUMNS if not c.startswith("cold.")]),
        "company 'cold' of the site config has no column cold.load_kw",
    ),
    (
        "PV company without its PV column",
        lambda: contract_csv(START, T0, [c for c in COLUMNS if c != "bakery.pv_kw"]),
        "company 'bakery' has PV (100 kW peak) but no column bakery.pv_kw",
    ),
    (
        "first column not t_s",
        lambda: replace_line(good_contract(), 0, good_contract()[0].replace("t_s", "time")),
        "line 1: the first column is 'time', expected t_s",
    ),
    (
        "metering header",
        lambda: "timestamp,company,import_kwh,export_kwh\n",
        "line 1: a metering export (timestamp,company,...), not a contract history.csv",
    ),
    (
        "not on a quarter-hour",
        lambda: cell(good_contract(), 2, "t_s", "-2690"),
        "line 3: t_s = -2690 is not on a local quarter-hour (t0 + t_s = 2026-06-21 23:15:10+02:00)",
    ),
    ("at t0", lambda: cell(good_contract(), 4, "t_s", "0"), "line 5: t_s = 0 is not before t0"),
    ("in the future", lambda: cell(good_contract(), 4, "t_s", "900"), "line 5: t_s = 900 is not before t0"),
    ("duplicate", lambda: cell(good_contract(), 3, "t_s", "-2700"), "line 4: t_s = -2700 repeats line 3"),
    ("t_s not a number", lambda: cell(good_contract(), 2, "t_s", "x"), "line 3: t_s 'x' is not a number"),
    (
        "value not a number",
        lambda: cell(good_contract(), 2, "works.load_kw", "1,5".replace(",", ";")),
        "line 3: works.load_kw '1;5' is not a number",
    ),
    (
        "semicolons",
        lambda: "t_s;cold.load_kw\n-900;1\n",
        "line 1: the columns are separated by ';': expected ','",
    ),
    (
        "infinite",
        lambda: cell(good_contract(), 2, "cold.load_kw", "inf"),
        "line 3: cold.load_kw 'inf' is not a number",
    ),
    (
        "negative load",
        lambda: cell(good_contract(), 2, "bakery.load_kw", "-4"),
        "line 3: bakery.load_kw = -4 kW is negative",
    ),
    (
        "PV in W",
        lambda: cell(good_contract(), 2, "bakery.pv_kw", "45000"),
        "line 3: bakery.pv_kw = 45000 kW is above 1.5 x the configured PV peak (100 kW): W instead of kW?",
    ),
    (
        "a field short",
        lambda: replace_line(good_contract(), 2, "-2700,1,2"),
        "line 3: 3 fields, the header has 7",
    ),
    (
        "a row missing",
        lambda: "\n".join(line for k, line in enumerate(good_contract()) if k != 2) + "\n",
        (
            "between line 2 and line 3: no rows for 2026-06-21 23:15+02:00 to 2026-06-21 23:30+02:00 "
            "(1 quarter-hour), t_s -2700"
        ),
    ),
    (
        "a company's value missing",
        lambda: cell(good_contract(), 3, "works.load_kw", ""),
        (
            "between line 3 and line 5: works: no value for 2026-06-21 23:30+02:00 to 2026-06-21 23:45+02:00 "
            "(1 quarter-hour)"
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(b[1], b[2]) for b in BAD_CONTRACTS], ids=[b[0] for b in BAD_CONTRACTS]
)
def test_a_bad_contract_file_is_refused_naming_the_problem(text: Callable[[], str], expected: str) -> None:
    with pytest.raises(HistoryImportError) as err:
        parse_contract(text(), T0, PARAMS, source="h.csv")
    assert any(expected in line for line in err.value.problems), err.value.problems
    assert err.value.exit_code == 65
    assert str(err.value).startswith("h.csv: ")


def test_gaps_are_imported_as_unmeasured_when_allowed() -> None:
    text = "\n".join(line for k, line in enumerate(good_contract()) if k != 2) + "\n"
    text = cell(text.splitlines(), 1, "works.load_kw", "")
    got = parse_contract(text, T0, PARAMS, allow_gaps=True)
    rec = got.records[0]
    assert rec.date == dt.date(2026, 6, 21)
    assert np.isnan(rec.load_kw[93]).all()  # 23:15, no row
    assert np.isnan(rec.load_kw[92, 2])  # 23:00, works empty
    assert not np.isnan(rec.load_kw[92, :2]).any()
    assert rec.slots_measured == 2  # 23:30 and 23:45 with every company
    assert got.unmeasured == 3 + 1  # the missing row for three companies, works' empty cell


def test_a_bad_t0_is_one_problem() -> None:
    with pytest.raises(HistoryImportError) as err:
        parse_contract(contract_csv(START, T0), T0 + 60, PARAMS)
    assert err.value.problems == ["t0 2026-06-22 00:01+02:00 is not on a quarter-hour"]


def test_problems_are_listed_up_to_twenty_lines_then_counted() -> None:
    start = T0 - 30 * 900
    lines = contract_csv(start, T0).splitlines()
    for k in range(1, 31):
        lines[k] = lines[k].replace(",", ",-", 1)  # every bakery load negative
    with pytest.raises(HistoryImportError) as err:
        parse_contract("\n".join(lines), T0, PARAMS)
    assert len(err.value.problems) == 30
    shown = err.value.lines()
    assert len(shown) == 21
    assert shown[-1] == "... 10 more"
    assert shown[0].startswith("line 2: bakery.load_kw = -")


# --- a metering company's export ---------------------------------------------------------------------------


def metering_rows(rows: Sequence[tuple[str, str, float, float, float | None]], pv: bool) -> str:
    head = "timestamp,company,import_kwh,export_kwh" + (",pv_kwh" if pv else "")
    out = [head]
    for ts, cid, imp, exp, pv_kwh in rows:
        line = f"{ts},{cid},{imp:g},{exp:g}"
        if pv:
            line += "," if pv_kwh is None else f",{pv_kwh:g}"
        out.append(line)
    return "\n".join(out) + "\n"


NOON = "2026-06-21T12:00:00+02:00"
NOON_15 = "2026-06-21T12:15:00+02:00"


def test_metering_recovers_the_load_with_a_pv_meter() -> None:
    text = metering_rows(
        [
            (NOON, "bakery", 10.0, 2.0, 20.0),  # net 32 kW, PV 80 kW: load 112 kW
            (NOON_15, "bakery", 0.0, 5.0, 15.0),  # net -20 kW, PV 60 kW: load 40 kW
            (NOON, "cold", 8.0, 0.0, None),  # no PV: load = net
            (NOON_15, "cold", 7.5, 0.0, None),
            (NOON, "works", 1.0, 0.0, 2.5),
            (NOON_15, "works", 0.0, 0.0, 2.0),
        ],
        pv=True,
    )
    got = parse_metering(text, PARAMS, t0_utc=T0)
    assert got.format == "metering"
    assert got.companies == IDS
    assert got.pv_estimated == ()
    assert got.clipped == 0
    (rec,) = got.records
    assert rec.date == dt.date(2026, 6, 21)
    assert rec.day_type is DayType.SUNDAY
    assert list(rec.load_kw[48]) == pytest.approx([112.0, 32.0, 14.0])
    assert list(rec.load_kw[49]) == pytest.approx([40.0, 30.0, 8.0])
    assert list(rec.pv_kw[48]) == pytest.approx([80.0, 0.0, 10.0])
    assert rec.slots_measured == 2


def test_metering_without_a_pv_meter_estimates_a_clear_sky() -> None:
    text = metering_rows(
        [
            (NOON, "bakery", 10.0, 0.0, None),
            (NOON, "cold", 8.0, 0.0, None),
            ("2026-06-21T10:00:00Z", "works", 1.0, 0.0, None),  # the same quarter, in UTC
        ],
        pv=False,
    )
    got = parse_metering(text, PARAMS)
    (rec,) = got.records
    mid = local("2026-06-21T12:00") + 450
    shape = clear_sky_shape(mid, 52.09, 5.12)
    assert 0.8 < shape < 0.9  # the sun is high at noon in June
    assert rec.load_kw[48, 0] == pytest.approx(40.0 + 100 * 0.8 * shape)
    assert rec.load_kw[48, 1] == pytest.approx(32.0)
    assert rec.load_kw[48, 2] == pytest.approx(4.0 + 50 * 0.8 * shape)
    assert np.isnan(rec.pv_kw[48, 0])  # an estimate is not a measurement
    assert rec.pv_kw[48, 1] == 0.0
    assert got.pv_estimated == ("bakery", "works")
    assert any("clear sky" in n and "import caps" in n for n in got.notes)
    # at night the estimate is nothing: load = net
    night = parse_metering(
        metering_rows([("2026-06-21T01:00:00+02:00", "bakery", 3.0, 0.0, None)], pv=False), PARAMS
    )
    assert night.records[0].load_kw[4, 0] == pytest.approx(12.0)
    # the configured ratio is the one used
    half = parse_metering(text, site_params(pv_clear_sky_ratio=0.5))
    assert half.records[0].load_kw[48, 0] == pytest.approx(40.0 + 100 * 0.5 * shape)


def test_metering_clips_a_negative_load_and_counts_it() -> None:
    text = metering_rows([(NOON, "cold", 0.0, 3.0, None), (NOON_15, "cold", 1.0, 0.0, None)], pv=False)
    got = parse_metering(text, PARAMS)
    assert got.clipped == 1
    assert got.records[0].load_kw[48, 1] == 0.0
    assert got.records[0].load_kw[49, 1] == 4.0
    assert "1 negative load(s) clipped to 0 kW" in got.notes
    # a company of the config that is not in the file is left unmeasured, and said so
    assert got.companies == ("cold",)
    assert np.isnan(got.records[0].load_kw[:, 0]).all()
    assert "not in the file (left unmeasured): bakery, works" in got.notes


def test_metering_columns_may_come_in_any_order_with_other_columns() -> None:
    text = "meter_id,export_kwh,company,quality,timestamp,import_kwh\nM1,0,cold,ok,2026-06-21T12:00+02:00,2\n"
    got = parse_metering(text, PARAMS)
    assert got.records[0].load_kw[48, 1] == 8.0


GOOD_METERING = [(NOON, "cold", 1.0, 0.0, None), (NOON_15, "cold", 1.0, 0.0, None)]


def metering(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


BAD_METERING: list[tuple[str, str, str] | tuple[str, str, str, float]] = [
    ("empty", "", "empty file: no header"),
    ("header only", "timestamp,company,import_kwh,export_kwh\n", "empty file: a header (line 1) but no rows"),
    (
        "power instead of energy",
        metering(["timestamp,company,import_kw,export_kwh", f"{NOON},cold,4,0"]),
        "line 1: column 'import_kw': wrong unit 'kw', expected import_kwh (energy in kWh per quarter-hour)",
    ),
    (
        "MWh",
        metering(["timestamp,company,import_kwh,export_mwh", f"{NOON},cold,4,0"]),
        "line 1: column 'export_mwh': wrong unit 'mwh', expected export_kwh",
    ),
    (
        "Wh",
        metering(["timestamp,company,import_kwh,export_kwh,pv_wh", f"{NOON},cold,4,0,0"]),
        "line 1: column 'pv_wh': wrong unit 'wh', expected pv_kwh",
    ),
    (
        "one energy column",
        metering(["timestamp,company,energy_wh", f"{NOON},cold,4"]),
        "line 1: column 'energy_wh': expected import_kwh and export_kwh",
    ),
    (
        "a column missing",
        metering(["timestamp,company,import_kwh", f"{NOON},cold,4"]),
        "line 1: no column export_kwh",
    ),
    (
        "contract header",
        metering(["t_s,cold.load_kw", "-900,1"]),
        "line 1: a contract history.csv (t_s,...), not a metering export",
    ),
    (
        "negative energy",
        metering_rows([(NOON, "cold", -1.0, 0.0, None)], pv=False),
        "line 2: import_kwh = -1 is negative",
    ),
    (
        "PV in Wh",
        metering_rows([(NOON, "works", 1.0, 0.0, 9000.0)], pv=True),
        (
            "line 2: pv_kwh = 9000 in a quarter-hour is 36000 kW, above 1.5 x the configured PV peak "
            "(50 kW): Wh instead of kWh?"
        ),
    ),
    (
        "unknown company",
        metering_rows(
            [*GOOD_METERING, (NOON, "ghost", 1.0, 0.0, None), (NOON_15, "ghost", 1.0, 0.0, None)], pv=False
        ),
        "line 4: unknown company 'ghost' (2 rows): not in the site config (bakery, cold, works)",
    ),
    (
        "no company",
        metering_rows([(NOON, "", 1.0, 0.0, None)], pv=False),
        "line 2: no company",
    ),
    (
        "no offset",
        metering_rows([("2026-06-21T12:00:00", "cold", 1.0, 0.0, None)], pv=False),
        "line 2: timestamp '2026-06-21T12:00:00' has no UTC offset",
    ),
    (
        "not a time",
        metering_rows([("21/06/2026 12:00", "cold", 1.0, 0.0, None)], pv=False),
        "line 2: timestamp '21/06/2026 12:00' is not ISO 8601",
    ),
    (
        "not on a quarter-hour",
        metering_rows([("2026-06-21T12:07:00+02:00", "cold", 1.0, 0.0, None)], pv=False),
        "line 2: timestamp 2026-06-21T12:07:00+02:00 is not the start of a local quarter-hour",
    ),
    (
        "the end of the quarter, not its start",
        metering_rows([("2026-06-21T12:15:30+02:00", "cold", 1.0, 0.0, None)], pv=False),
        "is not the start of a local quarter-hour",
    ),
    (
        "duplicate",
        metering_rows([*GOOD_METERING, ("2026-06-21T10:15:00Z", "cold", 1.0, 0.0, None)], pv=False),
        "line 4: cold 2026-06-21T10:15:00Z repeats line 3",
    ),
    (
        "not a number",
        metering(["timestamp,company,import_kwh,export_kwh", f"{NOON},cold,1.5kWh,0"]),
        "line 2: import_kwh '1.5kWh' is not a number",
    ),
    (
        "a gap",
        metering_rows([*GOOD_METERING, ("2026-06-21T13:00:00+02:00", "cold", 1.0, 0.0, None)], pv=False),
        (
            "between line 3 and line 4: cold: no value for 2026-06-21 12:30+02:00 to 2026-06-21 13:00+02:00 "
            "(2 quarter-hours)"
        ),
    ),
    (
        "a gap of one company inside the others' span",
        metering_rows([*GOOD_METERING, (NOON, "works", 1.0, 0.0, None)], pv=False),
        "after line 4: works: no value for 2026-06-21 12:15+02:00 to 2026-06-21 12:30+02:00 (1 quarter-hour)",
    ),
    (
        "an empty energy",
        metering(["timestamp,company,import_kwh,export_kwh", f"{NOON},cold,1,0", f"{NOON_15},cold,,0"]),
        "after line 2: cold: no value for 2026-06-21 12:15+02:00 to 2026-06-21 12:30+02:00",
    ),
    (
        "after t0",
        metering_rows(GOOD_METERING, pv=False),
        "line 3: the quarter from 2026-06-21T12:15:00+02:00 ends after t0 (2026-06-21 12:15+02:00)",
        local("2026-06-21T12:15"),
    ),
    (
        "semicolons",
        metering(["timestamp;company;import_kwh;export_kwh", f"{NOON};cold;1;0"]),
        "line 1: the columns are separated by ';': expected ','",
    ),
]


@pytest.mark.parametrize("case", BAD_METERING, ids=[b[0] for b in BAD_METERING])
def test_a_bad_metering_file_is_refused_naming_the_problem(
    case: tuple[str, str, str] | tuple[str, str, str, float],
) -> None:
    text, expected = case[1], case[2]
    t0 = case[3] if len(case) == 4 else None
    with pytest.raises(HistoryImportError) as err:
        parse_metering(text, PARAMS, t0_utc=t0)
    assert any(expected in line for line in err.value.problems), err.value.problems


def test_metering_gaps_are_left_unmeasured_when_allowed() -> None:
    text = metering_rows([*GOOD_METERING, ("2026-06-21T13:00:00+02:00", "cold", 1.0, 0.0, None)], pv=False)
    got = parse_metering(text, PARAMS, allow_gaps=True)
    assert got.unmeasured == 2
    assert list(np.isnan(got.records[0].load_kw[48:53, 1])) == [False, False, True, True, False]


# --- formats, and the merge rule ---------------------------------------------------------------------------


def test_the_format_is_detected_from_the_header() -> None:
    assert detect_format("\ufeff t_s ,bakery.load_kw\n") == "contract"
    assert detect_format("Timestamp,Company,import_kwh,export_kwh\n") == "metering"
    with pytest.raises(HistoryImportError) as err:
        detect_format("datum;tijd;verbruik\n")
    assert "not a history header" in err.value.problems[0]
    assert err.value.problems[1] == "line 1: the columns are separated by ';': expected ','"
    with pytest.raises(HistoryImportError, match="t0 is needed"):
        parse_history("t_s,cold.load_kw\n-900,1\n", PARAMS)
    got = parse_history(metering_rows(GOOD_METERING, pv=False), PARAMS)
    assert got.format == "metering"


def test_merge_takes_the_files_values_where_it_has_them() -> None:
    date = dt.date(2026, 6, 21)
    stored = DayRecord.empty(date, DayType.HOLIDAY, 3).with_slot(0, [1.0, 2.0, 3.0], [0.5, 0.0, 0.1], 9.0)
    stored = stored.with_slot(1, [1.0, 2.0, 3.0], [0.5, 0.0, 0.1], 9.5)
    imported = parse_metering(
        metering_rows([("2026-06-21T00:00:00+02:00", "cold", 5.0, 0.0, None)], pv=False), PARAMS
    ).records[0]
    merged = merge_day(stored, imported)
    assert merged.day_type is DayType.HOLIDAY  # the stored day keeps its type
    assert list(merged.load_kw[0]) == [1.0, 20.0, 3.0]  # cold from the file, the others stored
    assert list(merged.load_kw[1]) == [1.0, 2.0, 3.0]
    assert list(merged.peak_kw[:2]) == [9.0, 9.5]
    assert np.isnan(merged.load_kw[2:]).all()
    assert merge_day(None, imported) is imported
    assert math.isnan(imported.peak_kw[0])
    assert merged.load_kw.shape == (SLOTS, 3)
