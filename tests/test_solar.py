"""Solar position: checked against published values for Utrecht (52.09 N, 5.12 E)."""

from __future__ import annotations

import datetime as dt

import pytest

from hubctl.core.solar import clear_sky_shape, solar_elevation_deg

LAT, LON = 52.09, 5.12


def ts(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("when", "elevation", "tol"),
    [
        # solar noon near the solstices: 90 - lat + decl
        (ts(2026, 6, 21, 11, 40), 90 - LAT + 23.44, 0.3),
        (ts(2026, 12, 21, 11, 42), 90 - LAT - 23.44, 0.3),
        # equinox solar noon
        (ts(2026, 3, 20, 11, 48), 90 - LAT, 0.6),
        # deep night
        (ts(2026, 12, 21, 23, 40), LAT - 23.44 - 90, 0.5),  # lowest point: lat + decl - 90
    ],
)
def test_elevation(when: float, elevation: float, tol: float) -> None:
    assert solar_elevation_deg(when, LAT, LON) == pytest.approx(elevation, abs=tol)


def test_sunrise_and_sunset_on_the_longest_day() -> None:
    # Utrecht, 21 June: sunrise about 03:20 UTC, sunset about 20:05 UTC
    assert (
        solar_elevation_deg(ts(2026, 6, 21, 3, 0), LAT, LON)
        < 0
        < solar_elevation_deg(ts(2026, 6, 21, 3, 50), LAT, LON)
    )
    assert (
        solar_elevation_deg(ts(2026, 6, 21, 19, 40), LAT, LON)
        > 0
        > solar_elevation_deg(ts(2026, 6, 21, 20, 30), LAT, LON)
    )


def test_clear_sky_shape_bounds() -> None:
    start = ts(2026, 6, 21, 0, 0)
    shapes = [clear_sky_shape(start + k * 600, LAT, LON) for k in range(144)]
    assert min(shapes) == 0.0
    assert 0.85 < max(shapes) <= 1.0
    assert shapes.index(max(shapes)) in range(68, 72)  # around 11:40 UTC
