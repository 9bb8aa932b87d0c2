"""Tests for simulators.scenario_gen: determinism, the SCENARIOS.md contract, DST days, caps, realism,
several-day runs, history.csv and morning-ramp caps.

The written files are read back with the contract's own reader (`tools/score.py`
in the shared folder, skipped when missing), and the caps of a hard day and of
several-day runs are checked for feasibility with score.py's perfect-foresight LP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from support import score_module

from simulators.scenario_gen import (
    ARCHETYPES,
    GeneratedRun,
    GenOptions,
    day_type,
    generate,
    generate_run,
    public_holiday,
    solar_position,
    write_scenario,
)

if TYPE_CHECKING:
    import numpy.typing as npt

SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
SLUG = re.compile(r"^[a-z0-9-]+$")
SUMMER_WEEKDAY = dt.date(2026, 6, 23)  # a Tuesday
WINTER_WEEKDAY = dt.date(2026, 12, 15)
SATURDAY = dt.date(2026, 6, 27)
WINDOW = ("16:00", "20:00")
WEEK = dt.date(2026, 5, 11)  # a Monday; Thursday 14 May is Ascension Day
ASCENSION = dt.date(2026, 5, 14)
TZ = ZoneInfo("Europe/Amsterdam")


@functools.cache
def gen(opts: GenOptions) -> tuple[dict[str, Any], list[str], npt.NDArray[np.float64]]:
    """generate(), once per options (the results are not mutated by the tests)."""
    return generate(opts)


@functools.cache
def gen_run(opts: GenOptions) -> GeneratedRun:
    """generate_run(), once per options (the results are not mutated by the tests)."""
    return generate_run(opts)


def local_clock(
    sc: dict[str, Any], t: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float64]]:
    """Local date and hour of day of each t_s of a scenario (DST-aware)."""
    start = dt.datetime.fromisoformat(sc["start"]).timestamp()
    times = [dt.datetime.fromtimestamp(start + float(x), TZ) for x in t]
    dates = np.array([x.date() for x in times], dtype=object)
    hours = np.array([x.hour + x.minute / 60.0 + x.second / 3600.0 for x in times])
    return dates, hours


def column(header: list[str], rows: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
    return rows[:, header.index(name)]


def park_net(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Uncontrolled park grid power: sum of loads minus available PV."""
    return np.asarray(rows[:, 1::2].sum(axis=1) - rows[:, 2::2].sum(axis=1), dtype=np.float64)


def local_hours(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Local hour of day per row, on days without a DST change."""
    return np.asarray(rows[:, 0] / 3600.0, dtype=np.float64)


# ----------------------------------------------------------------- sun
@pytest.mark.parametrize(
    ("date", "max_elevation"), [(dt.date(2026, 6, 21), 61.35), (dt.date(2026, 12, 21), 14.47)]
)
def test_solar_noon_elevation_at_utrecht(date: dt.date, max_elevation: float) -> None:
    t0 = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC).timestamp()
    utc = t0 + np.arange(0.0, 86400.0, 10.0)
    elev, az = solar_position(utc)
    k = int(np.argmax(elev))
    assert elev[k] == pytest.approx(max_elevation, abs=0.1)
    assert az[k] == pytest.approx(180.0, abs=1.0)
    noon_utc_min = (utc[k] - t0) / 60.0
    assert 11 * 60 + 30 <= noon_utc_min <= 11 * 60 + 50  # lon 5.12 E: about 20 min before 12:00 UTC
    assert az[int(np.argmin(np.abs(utc - t0 - 6 * 3600)))] < 120.0  # morning sun in the east


# ----------------------------------------------------------------- determinism
def test_same_seed_gives_identical_output() -> None:
    opts = GenOptions(seed=7, date=SUMMER_WEEKDAY, import_window=WINDOW, company_caps=True, sky="broken")
    a, b = generate(opts), generate(opts)
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert np.array_equal(a[2], b[2])
    other = generate(GenOptions(seed=8, date=SUMMER_WEEKDAY, import_window=WINDOW, company_caps=True))
    assert not np.array_equal(a[2], other[2])


def test_sky_changes_only_pv_and_caps() -> None:
    """The weather has its own random stream: companies, loads and PV fields stay."""
    clear = gen(GenOptions(seed=4, date=SUMMER_WEEKDAY))
    for sky in ("broken", "overcast"):
        other = gen(GenOptions(seed=4, date=SUMMER_WEEKDAY, sky=sky))
        assert other[1] == clear[1]
        assert np.array_equal(other[2][:, 1::2], clear[2][:, 1::2])  # t_s and loads
        assert [c.get("pv") for c in other[0]["companies"]] == [c.get("pv") for c in clear[0]["companies"]]


# ----------------------------------------------------------------- the contract
CONTRACT_CASES = [
    GenOptions(seed=1, date=SUMMER_WEEKDAY),
    GenOptions(seed=2, date=WINTER_WEEKDAY, companies=9, sharing_key="static", import_window=WINDOW),
    GenOptions(seed=3, date=SATURDAY, companies=4, sharing_key="priority", company_caps=True, sky="broken"),
    GenOptions(seed=5, date=SUMMER_WEEKDAY, companies=2, pv_share=0.0, battery_share=0.0, step_s=60),
]


@pytest.mark.parametrize("opts", CONTRACT_CASES, ids=lambda o: o.default_name)
def test_contract_shape(opts: GenOptions) -> None:
    sc, header, rows = gen(opts)
    assert list(sc) == [
        "name",
        "start",
        "timezone",
        "location",
        "duration_s",
        "step_s",
        "profiles",
        "measurement_delay_s",
        "park",
        "companies",
        "sharing",
    ]
    start = dt.datetime.fromisoformat(sc["start"])
    assert start.utcoffset() is not None
    assert (start.date(), start.time()) == (opts.date, dt.time(0))
    assert sc["timezone"] == "Europe/Amsterdam"
    assert (sc["step_s"], sc["measurement_delay_s"], sc["profiles"]) == (1, 1, "profiles.csv")
    assert sc["duration_s"] == 86400
    ids = [c["id"] for c in sc["companies"]]
    assert len(ids) == opts.companies
    assert len(set(ids)) == len(ids)
    assert all(SLUG.match(i) for i in ids)
    assert header == ["t_s"] + [f"{i}.{col}" for i in ids for col in ("load_kw", "pv_kw")]
    # rows every step_s from 0 to duration_s inclusive, 2 decimals, loads and PV >= 0
    assert rows.shape == (sc["duration_s"] // opts.step_s + 1, len(header))
    assert rows[0, 0] == 0
    assert rows[-1, 0] == sc["duration_s"]
    assert np.all(np.diff(rows[:, 0]) == opts.step_s)
    assert np.array_equal(np.round(rows, 2), rows)
    assert np.all(rows[:, 1:] >= 0)
    park = sc["park"]
    assert park["import_limit_kw"] > 0
    assert park["export_limit_kw"] > 0
    for c in sc["companies"]:
        pv = column(header, rows, c["id"] + ".pv_kw")
        if "pv" in c:
            assert c["pv"]["ramp_pct_per_s"] == 10
            assert 1 <= c["pv"]["peak_kw"] <= 500 * opts.pv_share
            assert pv.max() <= c["pv"]["peak_kw"]
        else:
            assert not pv.any()
        if "battery" in c:
            b = c["battery"]
            assert 100 <= b["capacity_kwh"] <= 1000
            assert 0.5 * b["capacity_kwh"] - 5 <= b["max_charge_kw"] == b["max_discharge_kw"]
            assert b["max_discharge_kw"] <= b["capacity_kwh"] + 5
            assert 20 <= b["soc_pct"] <= 80
            assert (b["min_soc_pct"], b["max_soc_pct"], b["ramp_pct_per_s"]) == (5, 95, 50)
            assert 0.92 <= b["efficiency"] <= 0.96
    assert sum("battery" in c for c in sc["companies"]) == round(opts.battery_share * opts.companies)
    sharing = sc["sharing"]
    assert sharing["key"] == opts.sharing_key
    assert sharing["interval_s"] == 900
    if opts.sharing_key == "static":
        assert set(sharing["shares"]) <= set(ids)
        assert all(s > 0 for s in sharing["shares"].values())
        assert sum(sharing["shares"].values()) <= 1.0 + 1e-9
    if opts.sharing_key == "priority":
        assert set(sharing["order"]) <= set(ids)
        assert len(set(sharing["order"])) == len(sharing["order"])


@pytest.mark.parametrize(
    ("date", "duration_s", "offset_h"), [(dt.date(2026, 3, 29), 82800, 1), (dt.date(2026, 10, 25), 90000, 2)]
)
def test_dst_days_run_from_local_midnight_to_local_midnight(
    date: dt.date, duration_s: int, offset_h: int
) -> None:
    sc, _, rows = generate(GenOptions(seed=1, date=date, companies=2, step_s=300))
    assert sc["duration_s"] == duration_s
    start = dt.datetime.fromisoformat(sc["start"])
    assert start.utcoffset() == dt.timedelta(hours=offset_h)
    assert rows[-1, 0] == duration_s
    assert rows.shape[0] == duration_s // 300 + 1


def test_invalid_options_are_rejected() -> None:
    day = SUMMER_WEEKDAY
    for bad in (
        {"companies": 0},
        {"companies": 51},
        {"sky": "rain"},
        {"season": "spring"},
        {"sharing_key": "lottery"},
        {"battery_share": 1.5},
        {"step_s": 7},
        {"import_window": ("16:00", "16:00")},
        {"import_window": ("4pm", "20:00")},
        {"days": 0},
        {"days": 29},
        {"history_days": -1},
        {"history_days": 401},
        {"import_cap": "window"},
        {"sky": "variable"},
    ):
        with pytest.raises(ValueError):
            GenOptions(seed=1, date=day, **bad)
    with pytest.raises(ValueError, match="working day"):  # a weekend has no morning ramp
        GenOptions(seed=1, date=SATURDAY, days=2, import_cap="morning-ramp")


# ----------------------------------------------------------------- caps
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summer_default_day_has_export_congestion(seed: int) -> None:
    sc, _, rows = gen(GenOptions(seed=seed, date=SUMMER_WEEKDAY))
    net = park_net(rows)
    hours = local_hours(rows)
    midday = (hours >= 11) & (hours <= 15)
    assert -net[midday].min() > sc["park"]["export_limit_kw"]
    # the import cap bites too: 85-95 % of the uncontrolled peak, or higher only if the batteries need it
    assert sc["park"]["import_limit_kw"] < net.max()


def test_import_window_gets_a_lower_cap() -> None:
    sc, _, rows = gen(
        GenOptions(seed=2, date=WINTER_WEEKDAY, companies=9, sharing_key="static", import_window=WINDOW)
    )
    park = sc["park"]
    (window,) = park["windows"]
    assert (window["start"], window["end"]) == WINDOW
    assert window["import_limit_kw"] < park["import_limit_kw"]
    hours = local_hours(rows)
    in_window = (hours >= 16) & (hours < 20)
    assert park_net(rows)[in_window].max() > window["import_limit_kw"]  # the batteries must cover it


def test_company_caps_sit_near_their_own_peaks() -> None:
    sc, header, rows = gen(
        GenOptions(
            seed=3, date=SATURDAY, companies=4, sharing_key="priority", company_caps=True, sky="broken"
        )
    )
    capped = [c for c in sc["companies"] if "import_limit_kw" in c]
    assert len(capped) == 2
    assert any("battery" in c for c in capped)  # one with its own battery where there is one
    for c in capped:
        net = column(header, rows, c["id"] + ".load_kw") - column(header, rows, c["id"] + ".pv_kw")
        assert 0.8 * net.max() <= c["import_limit_kw"] <= 1.1 * net.max() + 5
        if "battery" not in c:
            assert c["import_limit_kw"] >= net.max()
        assert c["export_limit_kw"] > 0


# ----------------------------------------------------------------- realism
def test_archetypes_have_their_daily_shapes() -> None:
    sc, header, rows = gen(GenOptions(seed=1, date=SUMMER_WEEKDAY))
    _, _, saturday = gen(GenOptions(seed=1, date=SATURDAY))
    ids = [c["id"] for c in sc["companies"]]
    assert sorted(i.rsplit("-", 1)[0] for i in ids) == sorted(ARCHETYPES)
    h = local_hours(rows)

    def mean(kind: str, lo: float, hi: float, data: npt.NDArray[np.float64] = rows) -> float:
        return float(column(header, data, f"{kind}-1.load_kw")[(h >= lo) & (h < hi)].mean())

    assert mean("office", 9, 12) > 4 * mean("office", 1, 5)
    assert mean("office", 12.2, 12.8) < mean("office", 10, 11.5)  # lunch dip
    assert mean("office", 19, 23) < 0.5 * mean("office", 14, 16)  # evening drop
    assert mean("bakery", 3.5, 9.5) > 2 * mean("bakery", 17, 24)
    assert mean("supermarket", 10, 19) > 1.3 * mean("supermarket", 0, 5)
    assert mean("logistics", 19, 24) > 1.2 * mean("logistics", 10, 16)  # the EV fleet charges
    assert mean("metal-workshop", 8, 20) > 4 * mean("metal-workshop", 0, 5)
    for kind in ("office", "metal-workshop"):  # mostly off at weekends
        assert mean(kind, 8, 17, saturday) < 0.5 * mean(kind, 8, 17)
    shop = column(header, rows, "metal-workshop-1.load_kw")
    assert np.abs(np.diff(shop)).max() >= 20  # machines switch between rows
    cold = column(header, rows, "cold-store-1.load_kw")
    assert np.sum(np.abs(np.diff(cold)) > 0.1 * cold.max()) >= 2 * 20  # compressors cycle all day


def test_sky_models() -> None:
    opts = GenOptions(seed=4, date=SUMMER_WEEKDAY)
    sc, header, clear_rows = gen(opts)
    h = local_hours(clear_rows)
    for c in (c for c in sc["companies"] if "pv" in c):
        clear = column(header, clear_rows, c["id"] + ".pv_kw")
        day = (clear > 0.3 * c["pv"]["peak_kw"]) & (h > 10) & (h < 16)
        overcast = column(
            header, gen(GenOptions(seed=4, date=SUMMER_WEEKDAY, sky="overcast"))[2], c["id"] + ".pv_kw"
        )
        ratio = overcast[day] / clear[day]
        assert ratio.min() >= 0.14
        assert ratio.max() <= 0.42
        assert np.abs(np.diff(overcast[day])).max() < 0.05 * c["pv"]["peak_kw"]  # slow variation
        broken = column(
            header, gen(GenOptions(seed=4, date=SUMMER_WEEKDAY, sky="broken"))[2], c["id"] + ".pv_kw"
        )
        ratio = broken / np.where(clear > 0, clear, 1.0)
        shaded = day & (ratio < 0.45)
        assert ratio[day].min() >= 0.18
        assert 0.05 < shaded.mean() / day.mean() < 0.95
        # cloud edges: from sun to shade within one row
        drops = day[1:] & day[:-1] & (ratio[:-1] > 0.9) & (ratio[1:] < 0.45)
        assert drops.sum() >= 5


# ----------------------------------------------------------------- score.py reads it
def test_score_reads_the_written_files(tmp_path: Path) -> None:
    score = score_module()
    opts = GenOptions(
        seed=11, date=dt.date(2026, 10, 25), companies=5, import_window=WINDOW, sharing_key="static"
    )
    path = write_scenario(opts, tmp_path / "day", name="autumn-dst")
    assert path == tmp_path / "day" / "scenario.yaml"
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    sc_dict, header, rows = generate(opts)
    assert written == {**sc_dict, "name": "autumn-dst"}
    sc = score.load_scenario(str(path))
    assert sc["duration_s"] == 90000
    assert [c["id"] for c in sc["companies"]] == [c["id"] for c in sc_dict["companies"]]
    t, cols = score.read_profiles(sc)
    assert list(cols) == header
    assert np.array_equal(t, rows[:, 0])
    assert np.allclose(np.column_stack([cols[k] for k in header]), rows)
    sod, _ = score.clock(sc, np.array([16.5 * 3600 + 3600]))  # 16:30 local: an hour is repeated at night
    imp, _ = score.limits_in_force(sc["park"], sod)
    assert imp[0] == sc_dict["park"]["windows"][0]["import_limit_kw"]


def test_caps_are_feasible_for_a_perfect_schedule(tmp_path: Path) -> None:
    """score.py's perfect-foresight LP keeps every cap (on 5-minute means) on a hard day."""
    score = score_module()
    pytest.importorskip("scipy")
    opts = GenOptions(seed=3, date=WINTER_WEEKDAY, companies=5, import_window=WINDOW, company_caps=True)
    sc = score.load_scenario(str(write_scenario(opts, tmp_path)))
    lp = score.lp_bound(sc, score.read_profiles(sc), res_s=300, stages=("viol",))
    assert math.isclose(lp["lp_violation_kwh"], 0.0, abs_tol=1e-6)


# ----------------------------------------------------------------- several days
def test_day_types_follow_the_dutch_calendar() -> None:
    assert public_holiday(ASCENSION) == "Ascension Day"
    assert public_holiday(dt.date(2026, 12, 25)) is not None
    assert public_holiday(WEEK) is None
    assert [day_type(WEEK + dt.timedelta(days=k)) for k in range(7)] == [0, 1, 2, 6, 4, 5, 6]


@pytest.mark.parametrize(
    ("date", "days", "duration_s"),
    [
        (WEEK, 7, 7 * 86400),
        (dt.date(2026, 3, 28), 3, 3 * 86400 - 3600),
        (dt.date(2026, 10, 24), 2, 2 * 86400 + 3600),
    ],
)
def test_several_days_run_over_local_days(date: dt.date, days: int, duration_s: int) -> None:
    sc, header, rows = gen(GenOptions(seed=2, date=date, companies=3, days=days, step_s=300))
    assert sc["duration_s"] == duration_s
    assert dt.datetime.fromisoformat(sc["start"]) == dt.datetime.combine(date, dt.time(0), tzinfo=TZ)
    assert f"-{days}d-" in sc["name"]
    assert rows.shape == (duration_s // 300 + 1, len(header))
    assert np.all(np.diff(rows[:, 0]) == 300)
    assert rows[-1, 0] == duration_s
    dates, hours = local_clock(sc, rows[:, 0])
    assert dates[-1] == date + dt.timedelta(days=days)  # the end is the local midnight after the last day
    assert hours[-1] == 0.0


def test_sundays_and_holidays_are_quiet() -> None:
    sc, header, rows = gen(GenOptions(seed=1, date=WEEK, days=7, step_s=300))
    dates, hours = local_clock(sc, rows[:, 0])
    office = column(header, rows, "office-1.load_kw")
    shop = column(header, rows, "metal-workshop-1.load_kw")

    def day_mean(load: npt.NDArray[np.float64], k: int) -> float:
        return float(load[(dates == WEEK + dt.timedelta(days=k)) & (hours >= 9) & (hours < 16)].mean())

    for load in (office, shop):
        working = [day_mean(load, k) for k in (0, 1, 2, 4)]
        assert day_mean(load, 3) < 0.5 * min(working)  # Ascension Day
        assert day_mean(load, 6) < 0.5 * min(working)  # Sunday
    # a single holiday is a Sunday too
    _, h1, holiday = gen(GenOptions(seed=1, date=ASCENSION, step_s=300))
    _, h2, wednesday = gen(GenOptions(seed=1, date=ASCENSION - dt.timedelta(days=1), step_s=300))
    day = (local_hours(holiday) >= 9) & (local_hours(holiday) < 16)
    quiet = column(h1, holiday, "office-1.load_kw")[day].mean()
    assert quiet < 0.5 * column(h2, wednesday, "office-1.load_kw")[day].mean()


def test_working_days_vary_around_the_company_habits() -> None:
    sc, header, rows = gen(GenOptions(seed=1, date=WEEK, days=7, step_s=300))
    dates, hours = local_clock(sc, rows[:, 0])
    working = [WEEK + dt.timedelta(days=k) for k in (0, 1, 2, 4)]
    for cid in ("office-1", "metal-workshop-1", "bakery-1", "logistics-1"):
        load = column(header, rows, f"{cid}.load_kw")
        energy = np.array([load[dates == d].sum() for d in working])
        assert np.std(energy) / np.mean(energy) > 0.005  # no two days alike
        assert np.max(energy) < 1.6 * np.min(energy)  # but the same company
    # the office fills at a different time each day, within the hour
    office = column(header, rows, "office-1.load_kw")
    arrivals = []
    for d in working:
        day = dates == d
        half = 0.5 * (office[day].max() + office[day].min())
        arrivals.append(float(hours[day][np.argmax(office[day] > half)]))
    assert 0.0 < max(arrivals) - min(arrivals) < 1.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ev_fleets_charge_into_the_night_and_fewer_after_a_weekend(seed: int) -> None:
    sunday = dt.date(2026, 5, 10)
    monday, tuesday = sunday + dt.timedelta(days=1), sunday + dt.timedelta(days=2)
    sc, header, rows = gen(GenOptions(seed=seed, date=sunday, days=3, step_s=300))
    dates, hours = local_clock(sc, rows[:, 0])
    fleet = column(header, rows, "logistics-1.load_kw")

    def night_kwh(evening: dt.date, morning: dt.date) -> float:
        night = ((dates == evening) & (hours >= 18)) | ((dates == morning) & (hours < 7))
        return float(fleet[night].sum() * 300 / 3600)

    assert night_kwh(sunday, monday) < 0.8 * night_kwh(monday, tuesday)
    hall_off = fleet[(dates == sunday) & (hours >= 13) & (hours < 15)].mean()
    assert fleet[(dates == tuesday) & (hours < 1)].mean() > hall_off + 11.0  # Monday's vans still charge


def test_several_days_are_deterministic() -> None:
    opts = GenOptions(seed=5, date=WEEK, companies=4, days=3, history_days=3, step_s=300, sky="mixed")
    a, b = generate_run(opts), generate_run(opts)
    assert a.scenario == b.scenario
    assert a.header == b.header
    assert np.array_equal(a.rows, b.rows)
    assert a.history_rows is not None
    assert b.history_rows is not None
    assert np.array_equal(a.history_rows, b.history_rows)
    sc, header, rows = generate(opts)  # the first three parts, as before
    assert (sc, header) == (a.scenario, a.header)
    assert np.array_equal(rows, a.rows)
    other = generate_run(GenOptions(seed=6, date=WEEK, companies=4, days=3, history_days=3, step_s=300))
    assert not np.array_equal(a.rows[:, 1:], other.rows[:, 1:])


def test_mixed_sky_draws_a_sky_per_day() -> None:
    clear = gen(GenOptions(seed=5, date=WEEK, companies=4, days=7, step_s=300))
    mixed = gen(GenOptions(seed=5, date=WEEK, companies=4, days=7, step_s=300, sky="mixed"))
    broken = gen(GenOptions(seed=5, date=WEEK, companies=4, days=7, step_s=300, sky="broken"))
    assert np.array_equal(mixed[2][:, 1::2], clear[2][:, 1::2])  # the weather leaves the loads alone
    dates, _ = local_clock(clear[0], clear[2][:, 0])

    def ratios(rows: npt.NDArray[np.float64]) -> list[float]:
        pv, pv_clear = rows[:, 2::2].sum(axis=1), clear[2][:, 2::2].sum(axis=1)
        return [float(pv[dates == d].sum() / pv_clear[dates == d].sum()) for d in sorted(set(dates[:-1]))]

    kinds = {"clear" if r > 0.97 else "overcast" if r < 0.45 else "broken" for r in ratios(mixed[2])}
    assert kinds == {"clear", "broken", "overcast"}
    assert all(0.5 < r < 0.97 for r in ratios(broken[2]))  # a fixed sky holds every day


# ----------------------------------------------------------------- history
def test_history_csv_follows_the_contract(tmp_path: Path) -> None:
    score = score_module()
    date = dt.date(2026, 4, 2)  # 14 days back reach across the spring DST change (29 March)
    opts = GenOptions(seed=4, date=date, companies=4, days=2, history_days=14, step_s=300, sky="mixed")
    path = write_scenario(opts, tmp_path)
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert list(written)[6:9] == ["profiles", "history", "measurement_delay_s"]
    assert written["history"] == "history.csv"
    assert written["name"].endswith("-h14")
    sc = score.load_scenario(str(path))
    checks = score.Checks()
    score.check_history(sc, checks)
    assert [c["ok"] for c in checks.items] == [True]
    lines = (tmp_path / "history.csv").read_text(encoding="utf-8").splitlines()
    run = gen_run(opts)
    assert lines[0] == ",".join(run.header)
    hist = np.loadtxt(tmp_path / "history.csv", delimiter=",", skiprows=1)
    t = hist[:, 0]
    first = dt.datetime.combine(date - dt.timedelta(days=14), dt.time(0), tzinfo=TZ).timestamp()
    assert t[0] == first - dt.datetime.fromisoformat(written["start"]).timestamp()
    assert t[-1] == -900
    assert np.all(np.diff(t) == 900)
    assert len(t) == (14 * 24 - 1) * 4  # one hour fewer on 29 March
    dates, hours = local_clock(written, t)
    assert dates[0] == date - dt.timedelta(days=14)
    assert hours[0] == 0.0
    assert np.all(np.round(hours * 4) == hours * 4)  # local quarter-hours
    assert np.all(hist[:, 1:] >= 0)
    for c in written["companies"]:
        if "pv" not in c:
            assert not hist[:, run.header.index(c["id"] + ".pv_kw")].any()
    assert gen(GenOptions(seed=4, date=date, companies=4, days=2, step_s=300))[0].get("history") is None


def test_history_is_like_the_scenario_but_not_a_copy() -> None:
    opts = GenOptions(seed=3, date=WEEK, companies=6, days=7, history_days=14, step_s=60)
    run = gen_run(opts)
    assert run.history_rows is not None
    hist = run.history_rows
    quarters = run.rows[:-1].reshape(-1, 15, run.rows.shape[1]).mean(axis=1)  # the scenario per quarter-hour
    quarters[:, 0] = run.rows[:-1:15, 0]

    def working_profile(table: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], list[Any]]:
        dates, hours = local_clock(run.scenario, table[:, 0])
        load = table[:, 1::2].sum(axis=1)
        working = np.array([day_type(d) < 5 for d in dates])
        q = np.round(hours * 4).astype(int)
        days = sorted({d for d, w in zip(dates, working, strict=True) if w})
        return np.array([load[working & (q == k)].mean() for k in range(96)]), days

    past, past_days = working_profile(hist)
    now, _ = working_profile(quarters)
    assert len(past_days) == 9  # 27 April - 8 May: 10 weekdays, one of them King's Day
    assert np.corrcoef(past, now)[0, 1] > 0.95
    assert abs(past.mean() / now.mean() - 1.0) < 0.1
    # but no day repeats: not the history's days among themselves, nor the scenario's
    per_day = hist[:, 1:].reshape(14, 96, -1)
    for a in range(14):
        for b in range(a + 1, 14):
            assert not np.allclose(per_day[a], per_day[b])
    assert not np.allclose(per_day[7], quarters[:96, 1:])  # Monday a week ago and this Monday


# ----------------------------------------------------------------- morning ramp
MORNING_CASES = [
    GenOptions(seed=0, date=WEEK, companies=6, days=3, step_s=60, import_cap="morning-ramp"),
    GenOptions(seed=1, date=dt.date(2026, 9, 5), days=4, step_s=60, import_cap="morning-ramp", sky="mixed"),
    GenOptions(
        seed=2,
        date=WINTER_WEEKDAY,
        companies=5,
        days=2,
        step_s=60,
        import_cap="morning-ramp",
        company_caps=True,
    ),
]


@pytest.mark.parametrize("opts", MORNING_CASES, ids=lambda o: o.default_name)
def test_morning_ramp_passes_the_import_cap(opts: GenOptions) -> None:
    sc, _, rows = gen(opts)
    cap = sc["park"]["import_limit_kw"]
    net = park_net(rows)
    dates, hours = local_clock(sc, rows[:, 0])
    mornings = [(dates == d) & (hours >= 6) & (hours < 9) for d in sorted(set(dates[:-1])) if day_type(d) < 5]
    assert all(net[morning].max() > cap for morning in mornings)  # every working morning passes it
    assert cap < 0.85 * net[mornings[0]].max()  # the first one well
    assert 0.3 * net.max() <= cap <= 0.8 * net.max()
    bats = [c["battery"] for c in sc["companies"] if "battery" in c]
    held = sum((b["soc_pct"] - b["min_soc_pct"]) / 100 * b["capacity_kwh"] for b in bats)
    full = sum((b["max_soc_pct"] - b["min_soc_pct"]) / 100 * b["capacity_kwh"] for b in bats)
    above = float(np.clip(net[mornings[0]] - cap, 0.0, None).sum() * opts.step_s / 3600)
    assert held < above < full  # the batteries must charge before the first working morning


@pytest.mark.parametrize("opts", MORNING_CASES[:1] + MORNING_CASES[2:], ids=lambda o: o.default_name)
def test_several_days_are_feasible_for_a_perfect_schedule(opts: GenOptions, tmp_path: Path) -> None:
    """score.py's LP keeps every cap over the whole run (5-minute means), also with a window."""
    score = score_module()
    pytest.importorskip("scipy")
    for k, o in enumerate((opts, dataclasses.replace(opts, import_window=("06:00", "09:00")))):
        sc = score.load_scenario(str(write_scenario(o, tmp_path / str(k))))
        lp = score.lp_bound(sc, score.read_profiles(sc), res_s=300, stages=("viol",))
        assert math.isclose(lp["lp_violation_kwh"], 0.0, abs_tol=1e-6)
