"""Solar position and a clear-sky PV shape, for the controller's own PV forecast.

The sun's elevation follows the NOAA "general solar position" approximation
(Spencer's Fourier series for declination and the equation of time), accurate
to a fraction of a degree, which is far better than any PV forecast needs.

The clear-sky shape of a PV field is taken as `max(0, sin(elevation))`: the
output of a fixed field relative to its peak, up to a per-field factor that
the forecaster learns online from the inverter's own readings (orientation,
tilt, soiling and inverter limits all fold into that factor).
"""

from __future__ import annotations

import math
from functools import lru_cache

_DAY_S = 86400.0


def _day_of_year_and_hour(ts_utc: float) -> tuple[int, float]:
    days = ts_utc / _DAY_S
    whole = math.floor(days)
    hour = (days - whole) * 24.0
    # civil date from days since 1970-01-01 (Howard Hinnant's algorithm), only the day of year is needed
    z = whole + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy_mar = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year starting 1 March
    mp = (5 * doy_mar + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    day = doy_mar - (153 * mp + 2) // 5 + 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    cum = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
    doy = cum[month - 1] + day + (1 if leap and month > 2 else 0)
    return doy, hour


def solar_elevation_deg(ts_utc: float, lat_deg: float, lon_deg: float) -> float:
    """Elevation of the sun above the horizon in degrees (negative at night)."""
    doy, hour = _day_of_year_and_hour(ts_utc)
    g = 2.0 * math.pi / 365.0 * (doy - 1 + (hour - 12.0) / 24.0)
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    eqtime_min = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    true_solar_min = hour * 60.0 + eqtime_min + 4.0 * lon_deg
    hour_angle = math.radians(true_solar_min / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    cos_zen = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
    return 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))


def clear_sky_shape(ts_utc: float, lat_deg: float, lon_deg: float) -> float:
    """Relative clear-sky output of a fixed PV field, 0 at night: `max(0, sin(elevation))`."""
    return max(0.0, math.sin(math.radians(solar_elevation_deg(ts_utc, lat_deg, lon_deg))))


@lru_cache(maxsize=4096)
def clear_sky_shape_minute(minute_utc: int, lat_deg: float, lon_deg: float) -> float:
    """`clear_sky_shape` at the middle of a UTC minute, memoised: the control loop asks every second."""
    return clear_sky_shape(minute_utc * 60.0 + 30.0, lat_deg, lon_deg)
