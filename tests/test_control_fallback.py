"""The devices' fallback PV limit (`hubctl.core.failsafe.fallback_pv_limits`): table tests and properties.

A fallback holds from the moment no controller writes until one comes back, possibly days later,
so it is the fail-safe rule applied to the tightest export cap the configuration can put in force.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubctl.config.site import parse_config
from hubctl.core.control import step
from hubctl.core.failsafe import failsafe_pv_limits, fallback_pv_limits
from hubctl.core.types import CompanyReading, Overrides, Params, Snapshot, State

NOON = dt.datetime(2026, 6, 22, 10, 0, tzinfo=dt.UTC).timestamp()  # 12:00 in Amsterdam, 22 June
NIGHT = dt.datetime(2026, 6, 22, 0, 0, tzinfo=dt.UTC).timestamp()  # 02:00 in Amsterdam, 22 June
TODAY = dt.date(2026, 6, 22)
SOLAR_STORE: list[dict[str, Any]] = [
    {"id": "solar", "pv": {"peak_kw": 600}},
    {
        "id": "store",
        "pv": {"peak_kw": 300},
        "battery": {"capacity_kwh": 400, "max_charge_kw": 200, "max_discharge_kw": 200},
    },
    {"id": "office"},  # no PV: no limit
]


def params(park: dict[str, Any], companies: list[dict[str, Any]] | None = None, **control: Any) -> Params:
    data = {
        "park": park,
        "companies": companies or SOLAR_STORE,
        "control": {"margin_pct": 0, "margin_min_kw": 0, **control},
    }
    return Params.from_config(parse_config(data))


def window(start: str, end: str, export_kw: float) -> dict[str, Any]:
    return {"start": start, "end": end, "export_limit_kw": export_kw}


def schedule(day: dt.date, *windows: dict[str, Any]) -> dict[str, Any]:
    return {"date": day.isoformat(), "windows": list(windows)}


def approx(values: tuple[float | None, ...]) -> Any:
    return pytest.approx(values, abs=1e-9)


# --- table -------------------------------------------------------------------------------------------------

DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("park", "expected"),
    [
        pytest.param({"export_limit_kw": 180}, (120.0, 60.0, None), id="contract, shared by peak"),
        pytest.param({"import_limit_kw": 500}, (None, None, None), id="no export cap: no limit"),
        pytest.param({"export_limit_kw": 0}, (0.0, 0.0, None), id="no export at all"),
        pytest.param({"export_limit_kw": 2000}, (None, None, None), id="a cap above the peaks"),
        pytest.param(
            {"export_limit_kw": 180, "windows": [window("11:00", "15:00", 90)]},
            (60.0, 30.0, None),
            id="a lower window counts outside its hours too",
        ),
        pytest.param(
            {"export_limit_kw": 180, "windows": [window("11:00", "15:00", 900)]},
            (120.0, 60.0, None),
            id="a window that raises the cap: the contract is the tightest",
        ),
        pytest.param(
            {"windows": [window("11:00", "15:00", 90)]},
            (60.0, 30.0, None),
            id="a window without a contracted export cap",
        ),
        pytest.param(
            {"export_limit_kw": 180, "schedules": [schedule(TODAY + 2 * DAY, window("10:00", "12:00", 45))]},
            (30.0, 15.0, None),
            id="a schedule the day after tomorrow",
        ),
        pytest.param(
            {"export_limit_kw": 180, "schedules": [schedule(TODAY, window("01:00", "02:00", 45))]},
            (30.0, 15.0, None),
            id="a schedule of today whose window has passed",
        ),
        pytest.param(
            {"export_limit_kw": 180, "schedules": [schedule(TODAY - DAY, window("10:00", "12:00", 45))]},
            (120.0, 60.0, None),
            id="yesterday's schedule is over",
        ),
        pytest.param(
            {"export_limit_kw": 180, "schedules": [schedule(TODAY - DAY, window("22:00", "06:00", 45))]},
            (30.0, 15.0, None),
            id="yesterday's window across midnight still holds this morning",
        ),
        pytest.param(
            {"export_limit_kw": 180, "schedules": [schedule(TODAY - 7 * DAY, window("22:00", "06:00", 45))]},
            (120.0, 60.0, None),
            id="last week's schedule",
        ),
    ],
)
def test_fallback_pv_limits_from_the_tightest_park_cap(
    park: dict[str, Any], expected: tuple[float | None, ...]
) -> None:
    assert fallback_pv_limits(params(park), NOON) == approx(expected)


def test_the_date_that_counts_is_the_local_one() -> None:
    on_the_22nd = params(
        {"export_limit_kw": 180, "schedules": [schedule(TODAY, window("10:00", "12:00", 45))]}
    )
    utc_21st = dt.datetime(2026, 6, 21, 23, 30, tzinfo=dt.UTC).timestamp()  # 01:30 on the 22nd, local
    assert fallback_pv_limits(on_the_22nd, utc_21st) == approx((30.0, 15.0, None))
    utc_22nd = dt.datetime(2026, 6, 22, 22, 30, tzinfo=dt.UTC).timestamp()  # 00:30 on the 23rd, local
    assert fallback_pv_limits(on_the_22nd, utc_22nd) == approx((120.0, 60.0, None))


def test_a_companys_own_export_caps_bound_its_own_pv() -> None:
    companies: list[dict[str, Any]] = [
        {"id": "solar", "pv": {"peak_kw": 600}, "export_limit_kw": 200},
        {"id": "store", "pv": {"peak_kw": 300}, "windows": [window("12:00", "13:00", 20)]},
        {"id": "office", "export_limit_kw": 0},
    ]
    assert fallback_pv_limits(params({"export_limit_kw": 450}, companies), NIGHT) == approx(
        (200.0, 20.0, None)
    )


def test_the_margin_is_applied_as_in_the_fail_safe() -> None:
    p = params({"export_limit_kw": 180}, margin_pct=2, margin_min_kw=3)
    assert fallback_pv_limits(p, NOON) == approx((117.6, 58.8, None))  # (180 - 2 %) shared 2:1
    p = params({"export_limit_kw": 90}, margin_pct=2, margin_min_kw=3)
    assert fallback_pv_limits(p, NOON) == approx((58.0, 29.0, None))  # (90 - 3 kW) shared 2:1


def test_operator_export_limits_only_lower_the_fallback() -> None:
    p = params({"export_limit_kw": 180})
    lower = Overrides(park_export_kw=90, company_export_kw={"store": 10})
    assert fallback_pv_limits(p, NOON, lower) == approx((60.0, 10.0, None))
    higher = Overrides(park_export_kw=900, company_export_kw={"solar": 700})
    assert fallback_pv_limits(p, NOON, higher) == approx((120.0, 60.0, None))


def test_the_fail_safe_decision_uses_the_same_rule() -> None:
    """Contract caps only: the fallback is what the core's fail-safe writes."""
    companies: list[dict[str, Any]] = [
        {"id": "solar", "pv": {"peak_kw": 600}, "export_limit_kw": 100},
        *SOLAR_STORE[1:],
    ]
    p = params({"export_limit_kw": 180}, companies, margin_pct=2, margin_min_kw=3)
    stale = Snapshot(NOON, tuple(CompanyReading(None) for _ in companies))
    decision, _ = step(stale, State.initial(p), p)
    assert decision.mode == "failsafe"
    assert decision.pv_limit_kw == fallback_pv_limits(p, NOON)
    assert decision.pv_limit_kw == failsafe_pv_limits(p, 180, {"solar": 100})


# --- properties --------------------------------------------------------------------------------------------

HHMM = st.sampled_from(["00:00", "02:00", "06:00", "11:00", "13:30", "18:00", "22:00", "24:00"])
EXPORT = st.one_of(st.none(), st.floats(0, 3000))


@st.composite
def windows_st(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        start, end = draw(HHMM.filter(lambda h: h != "24:00")), draw(HHMM)
        if start == end:
            continue
        out.append({"start": start, "end": end, "export_limit_kw": draw(st.floats(0, 3000))})
    return out


@st.composite
def caps_st(draw: st.DrawFn) -> dict[str, Any]:
    days = draw(st.lists(st.integers(-3, 3), unique=True, max_size=3))
    schedules = [
        {"date": (TODAY + dt.timedelta(days=d)).isoformat(), "windows": w}
        for d in days
        if (w := draw(windows_st()))
    ]
    return {"export_limit_kw": draw(EXPORT), "windows": draw(windows_st()), "schedules": schedules}


def caps_that_count(caps: dict[str, Any]) -> list[float]:
    """Every export cap the configuration can put in force from today on (the test's own reading)."""
    out = [caps["export_limit_kw"], *(w["export_limit_kw"] for w in caps["windows"])]
    for sched in caps["schedules"]:
        day = dt.date.fromisoformat(sched["date"])
        for w in sched["windows"]:
            across_midnight = w["start"] > w["end"]  # "HH:MM" strings compare as times
            if day >= TODAY or (day == TODAY - DAY and across_midnight):
                out.append(w["export_limit_kw"])
    return [v for v in out if v is not None]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    park=caps_st(),
    peaks=st.lists(st.sampled_from([0.0, 5.0, 100.0, 400.0]), min_size=1, max_size=5),
    own=st.lists(st.one_of(st.none(), caps_st()), min_size=5, max_size=5),
    margin=st.tuples(st.floats(0, 20), st.floats(0, 10)),
    ts=st.sampled_from([NOON, NIGHT]),
)
def test_the_fallback_is_within_every_export_cap(
    park: dict[str, Any],
    peaks: list[float],
    own: list[dict[str, Any] | None],
    margin: tuple[float, float],
    ts: float,
) -> None:
    companies: list[dict[str, Any]] = []
    for k, peak in enumerate(peaks):
        company: dict[str, Any] = {"id": f"c{k}", **(own[k] or {})}
        if peak > 0:
            company["pv"] = {"peak_kw": peak}
        companies.append(company)
    p = params(park, companies, margin_pct=margin[0], margin_min_kw=margin[1])
    limits = fallback_pv_limits(p, ts)

    def room(cap: float) -> float:
        return max(0.0, cap - p.margin(cap))

    total_peak = sum(peaks)
    in_effect = [peak if lim is None else lim for peak, lim in zip(peaks, limits, strict=True)]
    for peak, lim, company in zip(peaks, limits, companies, strict=True):
        if peak <= 0:
            assert lim is None
            continue
        assert lim is None or 0.0 <= lim < peak  # never negative, never above peak (None: the peak)
        eff = peak if lim is None else lim
        for cap in caps_that_count(park):  # within the park's cap, as its share by peak
            assert eff <= peak * room(cap) / total_peak + 1e-6
        for cap in caps_that_count({"export_limit_kw": None, "windows": [], "schedules": [], **company}):
            assert eff <= room(cap) + 1e-9  # within the company's own caps
    for cap in caps_that_count(park):  # with no load at all, export stays within the park's cap
        assert sum(in_effect) <= room(cap) + 1e-6
