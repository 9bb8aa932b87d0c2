"""Synthetic park runs: a deterministic generator of scenarios (SCENARIOS.md).

`generate_run(opts)` returns a `GeneratedRun`: the content of `scenario.yaml` (a
dict), the header and rows of `profiles.csv` and, with `history_days`, those of
`history.csv`; `generate(opts)` returns the first three as before, and
`write_scenario` writes the files. Everything is drawn from numpy Generators
seeded by `opts.seed` (separate streams for the park layout, the weather, the
caps and each company), so the same options give the same run bit for bit, and
changing only `sky` keeps the companies, their loads and their PV fields. Pure
numpy; the only I/O is `write_scenario` (and the tz data behind `zoneinfo`, the
holiday tables of `holidays`).

Options (`GenOptions`)
    seed, date      the stream and the first local day
    companies       1-50 (default 6)
    season          summer | winter | auto (default: April-September is summer,
                    decided per day)
    sky             clear | broken | overcast (every day, the history too) |
                    mixed (each day draws one; see PV)
    pv_share        PV peak scale (1.0); pv_fraction: share of companies with PV (0.9)
    battery_share   share of companies with a battery (0.5)
    company_caps    two companies get own caps (False)
    import_window   ("HH:MM", "HH:MM"): a lower park import cap every day in that
                    local window (None)
    sharing_key     pro_rata | static | equal | priority
    step_s          row spacing of profiles.csv, a divisor of 900 (10)
    days            1-28 local days from midnight of `date` (1)
    history_days    0-400: history.csv for that many local days before `date` (0)
    import_cap      peak (85-95 % of the uncontrolled peak, as before) |
                    morning-ramp (a cap the working mornings pass; see Caps)

Time and day types
    The run starts at local midnight of `date` in Europe/Amsterdam, with the UTC
    offset of that moment, and lasts `days` local days: `duration_s` is the sum
    of their lengths (82800 s on the spring DST day, 90000 s on the autumn one).
    Rows every `step_s` from 0 to `duration_s` inclusive. Load shapes follow the
    local wall clock; the sun follows UTC. Each day is a working day
    (Monday-Friday), a Saturday or a Sunday; a Dutch public holiday
    (`holidays.country_holidays("NL")`: New Year, Good Friday, Easter, King's
    Day, Liberation Day in lustrum years, Ascension, Whitsun, Christmas) is a
    Sunday for every archetype, on a single day as well.

Several days and history
    The history days, the scenario days and the evening before the first of
    them are one timeline on which every company model runs at once, so
    compressors, machines, slow noise and EV fleets carry on across midnight
    (last evening's charging runs into the next morning, fewer vehicles charge
    after a Saturday or Sunday) and the history leads into t = 0. A company has
    habits, drawn from a stream of its own per parameter so that they do not
    depend on which days came first: when the office fills and empties, when a
    shift ends, how busy the hall or the shop is, whether a workshop runs one
    shift or two, whether the bakery bakes or the supermarket opens on Sundays.
    Each day varies around them: start and stop times by 5-15 min (sd), the
    day's activity by a factor 1 + N(0, s) within 0.8..1.2 (s = 3-8 %, a habit),
    offices are emptier on Mondays (85-100 %) and Fridays (70-100 %), machines
    and compressors switch differently every day, a different number of vans
    (85-100 %) returns at a different hour with a different charge, and now and
    then a day is unusual: an office event until 20-22h (4 % of working days),
    a two-shift workshop's overtime until 23-23:40 (5 %) or a one-shift
    workshop's extra evening shift (8 %), a fleet returning 1.5-3 h late (6 %
    of working-day evenings). A single day without history (days=1,
    history_days=0) is drawn exactly as before these options existed: no
    habits, no day-to-day factors, nothing unusual (so existing options give
    the same day bit for bit, except on public holidays, now Sundays).

Company archetypes (ids `<archetype>-<n>`; sizes are the nominal peak load)
    office          30-300 kW. Working days: arrival ramp ~07-08:30, plateau,
                    lunch dip 12-13, evening drop ~17-18:30, cleaners after;
                    night base 8-15 % (servers, ventilation). Summer: afternoon
                    air conditioning; winter: lighting at the dark ends of the
                    day and a cycling heat pump. Weekends: base only.
    cold-store      80-500 kW. Flat base with 1-3 compressors cycling (period
                    15-40 min, duty higher in summer and in the afternoon; in a
                    run +-3 % from day to day), defrost heaters every 6-8 h,
                    daytime door/forklift load.
    metal-workshop  150-600 kW. Shift ~06-22 on working days (in a run 40 % of
                    the workshops work one shift, to 15:00-16:30): hall base
                    plus machines of 20-150 kW switching on and off
                    (exponential dwell times, breaks at 10:00, 12:00, 18:00), so
                    the load jumps between rows. Saturdays sometimes a short
                    morning shift (35 %; in a run a habit of 10-60 %); otherwise
                    off (night base only).
    logistics       120-600 kW, a hall with an EV fleet. Hall 06-22; vans (and
                    on larger sites 0-3 e-trucks on 44 kW points) return
                    ~16-20:30 and charge (11 or 22 kW, constant power then a
                    taper), queueing for fewer charge points than vans, a third
                    on an off-peak timer (22-23h); half of the depots charge
                    smart instead (constant power to finish by 01-05:30). So a
                    large charging block 18-06, cut when the vehicles leave
                    05-07 (not on Sundays); last night's charging runs into the
                    morning; only 30 % of the vans charge on Saturday evenings
                    and 50 % on Sunday or holiday evenings (fewer vehicles after a
                    weekend); some midday top-ups.
    bakery          60-350 kW. Ovens (thermostatic cycling) and mixers from
                    ~03 to ~10, then shop/cleaning until ~15-16. Saturdays as
                    working days, Sundays mostly closed (30 % bake at half
                    load; in a run 30 % of the bakeries bake on 50-100 % of the
                    Sundays).
    supermarket     80-400 kW. Refrigeration racks cycling day and night; store
                    load 07-21 (Sundays 12-18, if open: 80 %; in a run 80 % of
                    the stores open every Sunday; Saturdays up to 15 % busier).
                    Summer cooling, winter heating.
    All loads carry slow (5-15 min) and fast (per row) noise and are >= 0.

PV
    Per company (`pv_fraction`, default 90 %, have PV): peak = min(500, 1.0-2.5 x
    its peak load) x `pv_share`. Fields flat, south, south-east/-west or
    east-west with 10-35 deg tilt: output = peak x 0.8 x (85 % direct on the
    tilted plane with air-mass attenuation + 15 % diffuse ~ sin(elevation)),
    clipped at peak. The sun comes from a NOAA solar-position function at lat
    52.09, lon 5.12. Sky, per day: `clear` (1-2 % haze), `broken` (cumulus:
    output drops to 20-40 % within one row for 30 s-10 min and returns,
    sometimes with cloud enhancement after the edge; clouds reach companies
    with a lag of up to 2 min and miss some), `overcast` (0.15-0.4 of clear,
    varying over tens of minutes). `mixed`: each day keeps the day before's
    sky with 40 %, else draws clear/broken/overcast with 35/40/25 % on summer
    days and 20/30/50 % on winter days.

History (`history_days` > 0)
    `history.csv` per SCENARIOS.md, and `history: history.csv` in scenario.yaml:
    the same companies and models over the `history_days` local days before
    `date` (day types, holidays, habits, day-to-day variation and weather draws
    as above, so the days are like the scenario's, not copies of them), sampled
    in the middle of every 60 s and averaged per quarter-hour: one row per 900 s
    aligned to local quarter-hours, from the local midnight starting the first
    history day (t_s < 0) to -900, for every company its load and its available
    PV (what it gave: PV limits are off before t = 0). Header as profiles.csv.

Batteries
    `round(battery_share x companies)` companies: 100-1000 kWh, C-rate 0.5-1,
    SoC 20-80 %, limits 5/95 %, efficiency 0.92-0.96, ramp 50 %/s (morning-ramp:
    more, larger and emptier; see Caps). PV ramp 10 %/s.

Caps (the run must be challenging and feasible)
    Feasibility is checked by a greedy per-battery simulation on 60 s blocks
    over the whole run (block maximum of the uncontrolled net load, so
    conservative; batteries carry their energy from day to day): a battery
    discharges exactly what lies above the cap, shared in proportion to the
    power each can still give, and charges with the headroom below the cap; at
    most 85 % of the available discharge power and 90 % of the charge power and
    headroom are used, and 5 % of each battery's usable energy is kept in
    reserve. Caps are multiples of 5 kW, the same every day.
    - Import, `peak`: target 85-95 % of the uncontrolled peak net import of the
      run; raised to the lowest cap the batteries can hold if the target is not
      feasible (without batteries that is the peak itself).
    - Import, `morning-ramp`: the morning ramp of working days (06-09, when
      offices, workshops and logistics halls start while the sun is low)
      passes the cap, and the batteries hold it only if they charge before the
      morning. Every battery starts at 5 % (its minimum: emptied the evening
      before); own-capped companies' batteries get their caps from there and
      refill at most at 20 % of their power in the park check (the night is
      the park's). Target: 40-75 % of the uncontrolled peak net import, at
      least 1.05 x the lowest cap at which every day has the room below it to
      recharge (80 %) what the batteries give above it, at most 0.85 x the
      lowest working-day morning level (75th percentile of the net over
      06-09). Battery sets are tried in a ladder (the drawn ones; scaled 1.5x
      twice, at most 1000 kWh each at the same C-rate; then one more battery
      at a time at a company without one, up to 2.5 h of the peak net import;
      `battery_share` is only where it starts, 0 included): the smallest set
      that holds the target, else the largest and the lowest cap it holds.
      Each candidate is checked with the park's batteries at the highest
      common start SoC (at most 60 %) at which all batteries together hold
      less than 80 % of the energy the first working morning (06-09) needs
      above that cap; the start SoCs are then drawn between 5 % and that
      level (kept if the check still holds, else all at that level). So the
      energy above the cap on the first working morning exceeds what the
      batteries hold at the start, and a perfect schedule holds every cap.
      Typical caps: 0.5-0.7 of the peak. Rarely (about 1 run in 300 in a
      sweep, mostly 3-company parks whose evening peaks need more storage)
      the lowest cap the batteries can hold lies above the first working
      morning.
    - Window (`import_window`, every day at local time): the lowest window cap
      (not below 20 % of the base cap) that the batteries can just hold over the
      whole run, given the base cap.
    - Export: with a midday surplus X >= 20 kW (the run's largest), a cap between
      30 % and 80 % of X chosen so that the surplus energy above it on the day
      with the most of it is 0.6-1.6 x the room the batteries have at the start
      (so they must be used, and curtailment may be needed); without batteries
      50-85 % of X. With no real surplus a loose cap above it (a park with
      little PV; about 1 in 100 default summer weekdays). Curtailment always
      keeps an export cap feasible.
    - `company_caps`: two companies (one with a battery where possible) get
      own caps near their own peaks: import 85-95 % of their own peak net
      import if their own battery can hold it (else just above the peak),
      export 50-90 % of their own surplus. Their batteries are reserved for
      their own caps in the park check, which uses their resulting grid power
      (curtailed to their own export cap).

Sharing: `pro_rata`/`equal` need nothing more; `static` gets floored Dirichlet
shares summing to at most 1; `priority` gets an order over about 2/3 of the
companies (the rest follow in config order).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import heapq
import math
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import numpy.typing as npt

    Arr = npt.NDArray[np.float64]
    BoolArr = npt.NDArray[np.bool_]

TIMEZONE = "Europe/Amsterdam"
LAT_DEG = 52.09
LON_DEG = 5.12
SEASONS = ("summer", "winter", "auto")
SKIES = ("clear", "broken", "overcast")
SKY_OPTIONS = (*SKIES, "mixed")
IMPORT_CAPS = ("peak", "morning-ramp")
SHARING_KEYS = ("pro_rata", "static", "equal", "priority")
ARCHETYPES = ("office", "cold-store", "metal-workshop", "logistics", "bakery", "supermarket")
MAX_DAYS = 28
MAX_HISTORY_DAYS = 400
HISTORY_STEP_S = 900
_HISTORY_SAMPLE_S = 60  # history is sampled at the midpoints of 60 s steps, then averaged per quarter-hour
_SIZE_KW = {
    "office": (30.0, 300.0),
    "cold-store": (80.0, 500.0),
    "metal-workshop": (150.0, 600.0),
    "logistics": (120.0, 600.0),
    "bakery": (60.0, 350.0),
    "supermarket": (80.0, 400.0),
}
_EXTRA_WEIGHTS = (0.3, 0.12, 0.15, 0.15, 0.1, 0.18)  # archetype mix beyond the first six companies
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")
_SKY_P = {True: (0.35, 0.4, 0.25), False: (0.2, 0.3, 0.5)}  # mixed: clear/broken/overcast, summer/winter
_SKY_KEEP = 0.4  # mixed: chance that a day has the sky of the day before

# greedy feasibility check (see the module docstring)
_BLOCK_S = 60.0
_DISCHARGE_MARGIN = 0.85
_CHARGE_MARGIN = 0.9
_RESERVE_FRACTION = 0.05
_CANDIDATES = 96
_MORNING = (6.0, 9.0)  # local hours of the morning ramp
_LOW_SOC_PCT = 5  # morning-ramp: the lowest start SoC (min_soc_pct: batteries emptied the evening before)
_OWN_CHARGE_SHARE = 0.2  # morning-ramp: own-capped batteries refill at most at this share of their power
_MAX_PARK_STORAGE_H = 2.5  # morning-ramp: batteries grow up to this many hours of the peak net import


@dataclasses.dataclass(frozen=True, slots=True)
class GenOptions:
    """What kind of park run to generate; see the module docstring."""

    seed: int
    date: dt.date
    companies: int = 6
    season: str = "auto"
    sky: str = "clear"
    pv_share: float = 1.0
    pv_fraction: float = 0.9  # of the companies with PV (the first always has it)
    battery_share: float = 0.5
    company_caps: bool = False
    import_window: tuple[str, str] | None = None
    sharing_key: str = "pro_rata"
    step_s: int = 10
    days: int = 1
    history_days: int = 0
    import_cap: str = "peak"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.companies <= 50:
            raise ValueError(f"companies must be 1..50, got {self.companies}")
        if self.season not in SEASONS:
            raise ValueError(f"season must be one of {SEASONS}, got {self.season!r}")
        if self.sky not in SKY_OPTIONS:
            raise ValueError(f"sky must be one of {SKY_OPTIONS}, got {self.sky!r}")
        if not (math.isfinite(self.pv_share) and self.pv_share >= 0):
            raise ValueError(f"pv_share must be >= 0, got {self.pv_share}")
        if not 0.0 <= self.pv_fraction <= 1.0:
            raise ValueError(f"pv_fraction must be in [0, 1], got {self.pv_fraction}")
        if not 0.0 <= self.battery_share <= 1.0:
            raise ValueError(f"battery_share must be in [0, 1], got {self.battery_share}")
        if self.sharing_key not in SHARING_KEYS:
            raise ValueError(f"sharing_key must be one of {SHARING_KEYS}, got {self.sharing_key!r}")
        if not (1 <= self.step_s <= 900 and 900 % self.step_s == 0):
            raise ValueError(f"step_s must divide 900, got {self.step_s}")
        if self.import_window is not None:
            start, end = self.import_window
            if not (_HHMM.match(start) and _HHMM.match(end)) or start in {end, "24:00"}:
                raise ValueError(
                    f"import_window must be two different 'HH:MM' times, got {self.import_window}"
                )
        if not 1 <= self.days <= MAX_DAYS:
            raise ValueError(f"days must be 1..{MAX_DAYS}, got {self.days}")
        if not 0 <= self.history_days <= MAX_HISTORY_DAYS:
            raise ValueError(f"history_days must be 0..{MAX_HISTORY_DAYS}, got {self.history_days}")
        if self.import_cap not in IMPORT_CAPS:
            raise ValueError(f"import_cap must be one of {IMPORT_CAPS}, got {self.import_cap!r}")
        if self.import_cap == "morning-ramp" and not any(
            day_type(self.date + dt.timedelta(days=k)) < 5 for k in range(self.days)
        ):
            raise ValueError("import_cap='morning-ramp' needs a working day in the run")
        if self.import_cap == "morning-ramp" and self.company_caps and self.companies < 3:
            raise ValueError("import_cap='morning-ramp' with company_caps needs at least 3 companies")

    @property
    def is_summer(self) -> bool:
        """The season of the first day."""
        return _is_summer(self.season, self.date)

    @property
    def default_name(self) -> str:
        season = "summer" if self.is_summer else "winter"
        days = f"-{self.days}d" if self.days > 1 else ""
        name = f"gen-{self.date:%Y%m%d}{days}-{season}-{self.sky}-{self.companies}c-s{self.seed}"
        if self.import_cap != "peak":
            name += f"-{self.import_cap}"
        return name + (f"-h{self.history_days}" if self.history_days else "")


@dataclasses.dataclass(frozen=True, slots=True)
class GeneratedRun:
    """What `generate_run` returns: scenario.yaml as a dict, profiles.csv (header
    and rows) and, with `history_days`, history.csv (header and rows)."""

    scenario: dict[str, Any]
    header: list[str]
    rows: Arr
    history_header: list[str] | None = None
    history_rows: Arr | None = None


# ---------------------------------------------------------------- calendar
@functools.cache
def _holidays_nl(year: int) -> dict[dt.date, str]:
    return {day: str(name) for day, name in holidays.country_holidays("NL", years=year).items()}


def public_holiday(date: dt.date) -> str | None:
    """The name of the Dutch public holiday on date (the `holidays` package), or None."""
    return _holidays_nl(date.year).get(date)


def day_type(date: dt.date) -> int:
    """0-4: a working day (Monday-Friday), 5: Saturday, 6: Sunday or a public holiday."""
    return 6 if public_holiday(date) is not None else date.weekday()


def _is_summer(season: str, date: dt.date) -> bool:
    if season == "auto":
        return 4 <= date.month <= 9
    return season == "summer"


# ---------------------------------------------------------------- time and sun
@dataclasses.dataclass(frozen=True, slots=True)
class _Clock:
    start: dt.datetime
    duration_s: int
    t: Arr  # s since the start, one per row
    utc_s: Arr
    hour: Arr  # local wall-clock hour of day
    transition_wall_s: float  # local wall-clock s of a DST change (inf: none)
    delta_s: float  # change of the UTC offset that day

    def wall_to_t(self, hours: Arr) -> Arr:
        """Elapsed seconds of local wall-clock hours of this day (first occurrence)."""
        wall = np.asarray(hours, dtype=np.float64) * 3600.0
        return np.where(wall >= self.transition_wall_s + max(self.delta_s, 0.0), wall - self.delta_s, wall)


def _day_clock(date: dt.date, step_s: int, *, midpoints: bool = False) -> _Clock:
    """One local day: rows every step_s from 0 to its length inclusive, or with
    midpoints one row in the middle of each step (none at the end)."""
    tz = ZoneInfo(TIMEZONE)
    start = dt.datetime.combine(date, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    start_utc = start.timestamp()
    duration = round(end.timestamp() - start_utc)
    if midpoints:
        t = (np.arange(duration // step_s, dtype=np.float64) + 0.5) * step_s
    else:
        t = np.arange(duration // step_s + 1, dtype=np.float64) * step_s
    # UTC offsets change on quarter-hours: one offset per quarter of the day
    quarters = duration // 900 + 1
    offsets = np.array(
        [_utc_offset_s(start_utc + 900.0 * k, tz) for k in range(quarters + 1)], dtype=np.float64
    )
    q = np.minimum((t // 900).astype(np.int64), quarters)
    sod = t + offsets[q] - offsets[0]
    changed = np.flatnonzero(offsets != offsets[0])
    transition = 900.0 * float(changed[0]) if changed.size else math.inf
    return _Clock(
        start=start,
        duration_s=duration,
        t=t,
        utc_s=start_utc + t,
        hour=sod / 3600.0,
        transition_wall_s=transition,
        delta_s=float(offsets[-1] - offsets[0]),
    )


def _utc_offset_s(utc_s: float, tz: ZoneInfo) -> float:
    offset = dt.datetime.fromtimestamp(utc_s, tz).utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


@dataclasses.dataclass(frozen=True, slots=True)
class _Day:
    """One local day of the timeline."""

    date: dt.date
    weekday: int  # day type (day_type): 0-4 working day, 5 Saturday, 6 Sunday or public holiday
    prev_weekday: int  # day type of the day before
    summer: bool
    clock: _Clock  # the day on its own clock (DST)
    start_t: float  # t of its local midnight on the timeline
    rows: slice  # its rows on the timeline

    @property
    def workday(self) -> bool:
        return self.weekday < 5

    def wall_to_t(self, hours: Arr) -> Arr:
        """Timeline seconds of local wall-clock hours of this day."""
        return self.start_t + self.clock.wall_to_t(hours)


@dataclasses.dataclass(frozen=True, slots=True)
class _Timeline:
    """The history days (sampled every 60 s) and the scenario days (rows every
    step_s up to the end inclusive) as one run of time, t = 0 at the start of the
    scenario. Every company model runs over all of it at once, so processes
    (compressors, machines, noise, an EV fleet charging past midnight) carry on
    from day to day and from the history into the scenario."""

    start: dt.datetime
    duration_s: int  # of the scenario
    t: Arr
    utc_s: Arr
    hour: Arr  # local wall-clock hour of the row's day (24.0 at the very end)
    days: tuple[_Day, ...]
    history_days: int
    history_rows: int
    legacy: bool  # a single day without history: the draws of earlier versions

    @property
    def scenario_days(self) -> tuple[_Day, ...]:
        return self.days[self.history_days :]

    def scenario_slice(self, day: _Day) -> slice:
        """The rows of a scenario day among the scenario rows."""
        return slice(day.rows.start - self.history_rows, day.rows.stop - self.history_rows)


def _timeline(opts: GenOptions) -> _Timeline:
    tz = ZoneInfo(TIMEZONE)
    start = dt.datetime.combine(opts.date, dt.time(0), tzinfo=tz)
    start_utc = start.timestamp()
    first = opts.date - dt.timedelta(days=opts.history_days)
    n_days = opts.history_days + opts.days
    ts: list[Arr] = []
    hours: list[Arr] = []
    days: list[_Day] = []
    row = 0
    for k in range(n_days):
        date = first + dt.timedelta(days=k)
        history = k < opts.history_days
        clock = _day_clock(date, _HISTORY_SAMPLE_S if history else opts.step_s, midpoints=history)
        start_t = float(round(clock.start.timestamp() - start_utc))
        n = clock.t.size if (history or k == n_days - 1) else clock.t.size - 1  # midnight: the next day's
        ts.append(start_t + clock.t[:n])
        hours.append(clock.hour[:n])
        days.append(
            _Day(
                date=date,
                weekday=day_type(date),
                prev_weekday=day_type(date - dt.timedelta(days=1)),
                summer=_is_summer(opts.season, date),
                clock=clock,
                start_t=start_t,
                rows=slice(row, row + n),
            )
        )
        row += n
    t = ts[0] if len(ts) == 1 else np.concatenate(ts)
    end = dt.datetime.combine(opts.date + dt.timedelta(days=opts.days), dt.time(0), tzinfo=tz)
    return _Timeline(
        start=start,
        duration_s=round(end.timestamp() - start_utc),
        t=t,
        utc_s=start_utc + t,
        hour=hours[0] if len(hours) == 1 else np.concatenate(hours),
        days=tuple(days),
        history_days=opts.history_days,
        history_rows=sum(d.rows.stop - d.rows.start for d in days[: opts.history_days]),
        legacy=opts.days == 1 and opts.history_days == 0,
    )


def solar_position(utc_s: Arr, lat_deg: float = LAT_DEG, lon_deg: float = LON_DEG) -> tuple[Arr, Arr]:
    """(elevation, azimuth clockwise from north), degrees, at UNIX times; NOAA's
    spreadsheet formulas (no refraction), good to ~0.01 deg for 1800-2100."""
    jd = np.asarray(utc_s, dtype=np.float64) / 86400.0 + 2440587.5
    jc = (jd - 2451545.0) / 36525.0
    l0 = np.radians((280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0)
    m = np.radians(357.52911 + jc * (35999.05029 - 0.0001537 * jc))
    ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    centre = (
        np.sin(m) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + np.sin(2 * m) * (0.019993 - 0.000101 * jc)
        + np.sin(3 * m) * 0.000289
    )
    omega = np.radians(125.04 - 1934.136 * jc)
    app_long = np.radians(np.degrees(l0) + centre - 0.00569 - 0.00478 * np.sin(omega))
    mean_obliq = 23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    obliq = np.radians(mean_obliq + 0.00256 * np.cos(omega))
    decl = np.arcsin(np.sin(obliq) * np.sin(app_long))
    y = np.tan(obliq / 2.0) ** 2
    eq_time_min = 4.0 * np.degrees(
        y * np.sin(2 * l0)
        - 2 * ecc * np.sin(m)
        + 4 * ecc * y * np.sin(m) * np.cos(2 * l0)
        - 0.5 * y * y * np.sin(4 * l0)
        - 1.25 * ecc * ecc * np.sin(2 * m)
    )
    true_solar_min = (np.mod(utc_s, 86400.0) / 60.0 + eq_time_min + 4.0 * lon_deg) % 1440.0
    hour_angle = np.radians(true_solar_min / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    cos_zen = np.clip(
        math.sin(lat) * np.sin(decl) + math.cos(lat) * np.cos(decl) * np.cos(hour_angle), -1.0, 1.0
    )
    zen = np.arccos(cos_zen)
    denom = math.cos(lat) * np.maximum(np.sin(zen), 1e-9)
    az0 = np.degrees(np.arccos(np.clip((math.sin(lat) * cos_zen - np.sin(decl)) / denom, -1.0, 1.0)))
    azimuth = np.where(hour_angle > 0, (az0 + 180.0) % 360.0, (540.0 - az0) % 360.0)
    return 90.0 - np.degrees(zen), azimuth


# ---------------------------------------------------------------- building blocks
def _smoothstep(x: Arr, a: float, b: float) -> Arr:
    u = np.clip((x - a) / (b - a), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _window(h: Arr, on_a: float, on_b: float, off_a: float, off_b: float) -> Arr:
    """0 -> 1 between on_a and on_b (hours), 1 -> 0 between off_a and off_b."""
    return _smoothstep(h, on_a, on_b) * (1.0 - _smoothstep(h, off_a, off_b))


def _slow_noise(rng: np.random.Generator, t: Arr, spacing_s: float, sigma: float) -> Arr:
    knots = np.arange(float(t[0]) - spacing_s, float(t[-1]) + 2 * spacing_s, spacing_s)
    return np.interp(t, knots, rng.normal(0.0, sigma, knots.size))


def _switching(rng: np.random.Generator, t: Arr, mean_on_s: float, mean_off_s: float, p_on: float) -> Arr:
    """A 0/1 on-off process with exponential dwell times (at least 60 s)."""
    first_on = bool(rng.random() < p_on)
    state = first_on
    s = float(t[0]) - float(rng.uniform(0.0, mean_on_s if state else mean_off_s))
    edges: list[float] = []
    while s <= t[-1]:
        s += max(60.0, float(rng.exponential(mean_on_s if state else mean_off_s)))
        edges.append(s)
        state = not state
    flips = np.searchsorted(np.array(edges), t, side="right")
    on: BoolArr = (flips % 2 == 0) == first_on
    return on.astype(np.float64)


def _cycler(rng: np.random.Generator, t: Arr, period_s: float, duty: Arr, jitter: float = 0.15) -> Arr:
    """A 0/1 thermostat cycle: on for duty x period at the start of each period
    (duty per row, read at the start of each cycle), periods jittered."""
    n = int((t[-1] - t[0]) / (period_s * (1.0 - jitter))) + 3
    periods = period_s * rng.uniform(1.0 - jitter, 1.0 + jitter, n)
    starts = (
        float(t[0]) + np.concatenate(([0.0], np.cumsum(periods[:-1]))) - float(rng.uniform(0.0, period_s))
    )
    d = np.clip(np.interp(starts, t, duty) + rng.normal(0.0, 0.03, n), 0.05, 0.97)
    k = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, n - 1)
    return ((t - starts[k]) < d[k] * periods[k]).astype(np.float64)


def _step_sum(t: Arr, starts: Arr, ends: Arr, power: Arr) -> Arr:
    """Sum of rectangular blocks [start, end) of power, at times t."""
    if starts.size == 0:
        return np.zeros_like(t)
    edges = np.concatenate([starts, ends])
    order = np.argsort(edges, kind="stable")
    level = np.cumsum(np.concatenate([power, -power])[order])
    idx = np.searchsorted(edges[order], t, side="right")
    return np.maximum(np.where(idx > 0, level[np.maximum(idx - 1, 0)], 0.0), 0.0)


def _rows(tl: _Timeline, days: Sequence[_Day]) -> BoolArr:
    mask = np.zeros(tl.t.size, dtype=np.bool_)
    for day in days:
        mask[day.rows] = True
    return mask


class _Draw:
    """Where a company's random draws come from. `rng` is the company's stream,
    drawn in sequence. In a run (several days or history) a parameter of a day
    is the company's habit for it (its own stream per name, so a habit does not
    depend on which days came first) plus that day's jitter, and `level` and
    `chance` give the day-to-day variation; a single day without history draws
    exactly as earlier versions did (a plain uniform, no level, nothing unusual)."""

    __slots__ = ("_habits", "_seed", "legacy", "rng")

    def __init__(self, rng: np.random.Generator, *, legacy: bool, habit_seed: Sequence[int]) -> None:
        self.rng = rng
        self.legacy = legacy
        self._seed = list(habit_seed)
        self._habits: dict[str, float] = {}

    def habit(self, key: str, lo: float, hi: float) -> float:
        if key not in self._habits:
            rng = np.random.default_rng([*self._seed, zlib.crc32(key.encode())])
            self._habits[key] = float(rng.uniform(lo, hi))
        return self._habits[key]

    def pick(self, key: str, lo: float, hi: float, sd: float) -> float:
        """A day's value: uniform in [lo, hi) on a single day; in a run the habit
        (uniform in [lo, hi), the same every day) plus N(0, sd)."""
        if self.legacy:
            return float(self.rng.uniform(lo, hi))
        return self.habit(key, lo, hi) + float(self.rng.normal(0.0, sd))

    def vary(self, value: float, key: str, lo: float, hi: float, sd: float = 0.0) -> float:
        """value on a single day; in a run the habit in [lo, hi) plus N(0, sd)."""
        if self.legacy:
            return value
        base = self.habit(key, lo, hi)
        return base + float(self.rng.normal(0.0, sd)) if sd > 0 else base

    def level(self) -> float:
        """The day's activity level: 1 on a single day; in a run 1 + N(0, s) within
        0.8..1.2, s (3-8 %) a habit of the company."""
        if self.legacy:
            return 1.0
        sd = self.habit("level-sd", 0.03, 0.08)
        return float(np.clip(1.0 + self.rng.normal(0.0, sd), 0.8, 1.2))

    def chance(self, p: float) -> bool:
        """An unusual day (probability p); never on a single day without history."""
        return not self.legacy and bool(self.rng.random() < p)


# ---------------------------------------------------------------- archetypes (p.u. of the peak, or kW)
def _office(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    base = float(rng.uniform(0.08, 0.15))
    pu = np.empty_like(t)
    weekday_factor = {0: d.vary(1.0, "monday", 0.85, 1.0), 4: d.vary(1.0, "friday", 0.7, 1.0)}  # hybrid work
    for day in tl.days:
        sl, hd = day.rows, h[day.rows]
        day_base = base + (0.03 if not day.summer else 0.0)
        pu[sl] = day_base
        if day.workday:
            on = d.pick("on", 6.8, 7.6, 0.2)
            off = d.pick("off", 16.8, 17.5, 0.25)
            occ = _window(
                hd, on, on + d.pick("arrive", 0.8, 1.5, 0.1), off, off + d.pick("leave", 0.7, 1.3, 0.1)
            )
            lunch = 1.0 - d.pick("lunch", 0.12, 0.25, 0.02) * _window(hd, 11.9, 12.2, 12.9, 13.3)
            busy = (0.82 - day_base) * occ * lunch
            if not d.legacy:
                busy *= d.level() * weekday_factor.get(day.weekday, 1.0)
            pu[sl] += busy
            pu[sl] += 0.05 * _window(hd, off + 1.2, off + 1.4, off + 2.6, off + 2.8)  # cleaners
            if day.summer:
                pu[sl] += d.pick("cooling", 0.05, 0.15, 0.03) * _window(hd, 10.5, 12.5, off + 0.5, off + 2.0)
            else:
                lights = _window(hd, on - 0.2, on + 0.3, 9.0, 9.5) + _window(
                    hd, 15.8, 16.3, off + 0.8, off + 1.2
                )
                pu[sl] += d.pick("lights", 0.05, 0.1, 0.01) * lights
            if d.chance(0.04):  # an evening event or a deadline
                late = float(rng.uniform(20.0, 22.0))
                pu[sl] += float(rng.uniform(0.15, 0.3)) * _window(hd, off, off + 0.5, late, late + 0.5)
        elif rng.random() < 0.3:  # someone in for a few hours
            s = float(rng.uniform(9.0, 13.0))
            pu[sl] += float(rng.uniform(0.05, 0.15)) * _window(hd, s, s + 0.3, s + 2.5, s + 2.8)
    winter = _rows(tl, [day for day in tl.days if not day.summer])
    if winter.any():  # heat pump
        duty = np.where((h > 5.5) & (h < 9.0), 0.8, 0.45)
        heat = float(rng.uniform(0.06, 0.12)) * _cycler(rng, t, float(rng.uniform(1500, 2700)), duty)
        pu += heat if winter.all() else heat * winter
    pu *= 1.0 + _slow_noise(rng, t, 600.0, 0.03)
    return peak_kw * pu + peak_kw * rng.normal(0.0, 0.012, t.size)


def _cold_store(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    pu = np.full_like(t, float(rng.uniform(0.3, 0.42)))
    for day in tl.days:  # doors and forklifts
        sl, hd = day.rows, h[day.rows]
        busy = (0.06 if day.weekday < 6 else 0.02) * d.level()
        on, off = d.vary(0.0, "doors-on", -0.3, 0.2, 0.1), d.vary(0.0, "doors-off", -0.5, 0.5, 0.2)
        pu[sl] += busy * _window(hd, 5.8 + on, 6.3 + on, 19.5 + off, 20.5 + off)
    n_comp = int(rng.integers(1, 4))
    shares = rng.dirichlet(np.full(n_comp, 3.0)) * float(rng.uniform(0.4, 0.52))
    for share in shares:
        u = float(rng.random())
        duty = np.empty_like(t)
        for day in tl.days:
            lo, hi = (0.55, 0.72) if day.summer else (0.35, 0.52)
            warm = (0.12 if day.summer else 0.04) * _window(h[day.rows], 11, 13, 17, 19)
            duty[day.rows] = lo + (hi - lo) * u + d.vary(0.0, "duty", 0.0, 0.0, 0.03) + warm
        pu += share * _cycler(rng, t, float(rng.uniform(900, 2400)), duty)
    every = float(rng.choice([6.0, 8.0])) * 3600.0
    first = float(rng.uniform(0.0, every))
    starts = np.arange(t[0] + first - every, float(t[-1]), every)
    pu += 0.1 * _step_sum(t, starts, starts + float(rng.uniform(1200, 1800)), np.ones(starts.size))
    pu *= 1.0 + _slow_noise(rng, t, 900.0, 0.02)
    return peak_kw * pu + peak_kw * rng.normal(0.0, 0.01, t.size)


def _workshop_shift(d: _Draw, day: _Day) -> tuple[float, float] | None:
    """A day's shift (start, end), local hours, or None. Two shifts 06-22 (a single
    day; in a run 60 % of the workshops, the others one shift to 15-16:30 with an
    occasional evening shift); Saturdays sometimes a short morning shift."""
    rng = d.rng
    if day.workday:
        s = 6.0 + d.pick("start", -0.25, 0.2, 0.1)
        if d.legacy or d.habit("two-shifts", 0.0, 1.0) < 0.6:
            e = 22.0 + d.pick("end", -0.3, 0.2, 0.15)
            if d.chance(0.05):  # overtime into the night
                e = float(rng.uniform(23.0, 23.7))
        else:
            e = 15.0 + d.pick("end-early", 0.0, 1.5, 0.2)
            if d.chance(0.08):  # an extra evening shift
                e = 22.0 + float(rng.uniform(-0.3, 0.2))
        return s, e
    if day.weekday == 5 and rng.random() < d.vary(0.35, "saturday", 0.1, 0.6):
        return 7.0 + float(rng.uniform(-0.2, 0.3)), 12.5 + float(rng.uniform(0.0, 1.0))
    return None


def _metal_workshop(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    night = float(rng.uniform(0.03, 0.06)) * peak_kw
    load = np.full_like(t, night)
    shifts = [_workshop_shift(d, day) for day in tl.days]
    if all(s is None for s in shifts):
        return load + peak_kw * rng.normal(0.0, 0.004, t.size)
    hall = float(rng.uniform(0.08, 0.14)) * peak_kw
    levels: list[float] = []
    for day, shift in zip(tl.days, shifts, strict=True):
        levels.append(d.level())
        if shift is not None:
            s, e = shift
            load[day.rows] += hall * _window(h[day.rows], s - 0.3, s, e, e + 0.3)
    budget = (peak_kw - night - hall) * float(rng.uniform(0.9, 1.2))
    powers: list[float] = []
    while sum(powers) < budget:
        powers.append(float(rng.uniform(20.0, 150.0)))
    breaks = [(10.0, 10.25), (12.0, 12.5), (18.0, 18.5)]
    usual = d.vary(1.0, "use", 0.8, 1.0)
    for p in powers:
        used = [
            k
            for k, (day, shift) in enumerate(zip(tl.days, shifts, strict=True))
            if shift is not None and not rng.random() > (min(1.0, usual * levels[k]) if day.workday else 0.35)
        ]
        if not used:
            continue
        on = _switching(rng, t, float(rng.uniform(300, 2400)), float(rng.uniform(300, 2400)), 0.5)
        gate = np.zeros(t.size, dtype=np.bool_)
        for k in used:
            day, (s, e) = tl.days[k], shifts[k]  # type: ignore[misc]
            hd = h[day.rows]
            ms = s + float(rng.uniform(0.0, 0.5))
            me = e - float(rng.uniform(0.0, 0.4))
            g = (hd >= ms) & (hd < me)
            for b0, b1 in breaks:
                if rng.random() < 0.8:
                    g &= ~((hd >= b0 + float(rng.uniform(-0.05, 0.05))) & (hd < b1))
            gate[day.rows] = g
        load += p * on * gate * (1.0 + _slow_noise(rng, t, 120.0, 0.04))
    quiet = ~_rows(tl, [day for day, s in zip(tl.days, shifts, strict=True) if s is not None])
    noise = rng.normal(0.0, 0.008, t.size)
    return load + peak_kw * (noise * np.where(quiet, 0.5, 1.0) if quiet.any() else noise)


def _fleet(
    rng: np.random.Generator,
    offset_s: float,
    charger_kw: Arr,
    energy_kwh: Arr,
    chargers: int,
    departure_t: Arr | None,
    *,
    spread: bool,
    late_h: float = 0.0,
) -> tuple[Arr, Arr, Arr]:
    """One evening's charging sessions as (start, end, kW) blocks: vehicles
    arrive ~16-20:30 (late_h later on an unusual evening; a third wait for an
    off-peak timer at 22-23h), queue for `chargers` charge points, charge at
    full power and then taper, and stop when they leave. With `spread` (smart
    depot charging) each vehicle instead charges at the constant power that
    finishes it between 01:00 and 05:30, within 50-100 % of its charger's
    power. offset_s is the t of the evening's local midnight (before it: last night)."""
    n = charger_kw.size
    mean, lo, hi = 17.8, 16.0, 20.5
    if late_h:
        mean, lo, hi = mean + late_h, lo + late_h, min(hi + late_h, 23.5)
    arrive = np.clip(rng.normal(mean, 0.8, n), lo, hi) * 3600.0 + offset_s
    timer = rng.random(n) < 0.35
    ready = np.where(timer, np.maximum(arrive, offset_s + rng.uniform(22.0, 23.0, n) * 3600.0), arrive)
    leave = departure_t if departure_t is not None else np.full(n, math.inf)
    free = [offset_s - 1e9] * chargers  # min-heap of the times charge points come free
    s_list: list[float] = []
    e_list: list[float] = []
    p_list: list[float] = []
    for i in np.argsort(ready, kind="stable"):
        start = max(float(ready[i]), heapq.heappop(free))
        p = float(charger_kw[i])
        taper_p = p * float(rng.uniform(0.35, 0.6))
        if spread:
            hours = (offset_s + float(rng.uniform(25.0, 29.5)) * 3600.0 - start) / 3600.0
            p = min(p, max(0.5 * p, float(energy_kwh[i]) / max(hours, 0.5)))
            taper_p = p
        mid = start + 0.88 * float(energy_kwh[i]) / p * 3600.0
        end = mid + 0.12 * float(energy_kwh[i]) / taper_p * 3600.0
        cut = float(leave[i])
        for a, b, pw in ((start, mid, p), (mid, end, taper_p)):
            if min(b, cut) > a:
                s_list.append(a)
                e_list.append(min(b, cut))
                p_list.append(pw)
        heapq.heappush(free, min(end, cut) if cut > start else start)
    return np.array(s_list), np.array(e_list), np.array(p_list)


def _logistics(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    base = float(rng.uniform(0.05, 0.08))
    pu = np.empty_like(t)
    for day in tl.days:
        pu[day.rows] = base + (0.04 if not day.summer else 0.0)
    for day in tl.days:
        sl, hd = day.rows, h[day.rows]
        hall = d.pick("hall", 0.15, 0.25, 0.01) * d.level() if day.workday else 0.04
        on, off = d.vary(0.0, "hall-on", -0.4, 0.2, 0.1), d.vary(0.0, "hall-off", -0.5, 0.3, 0.15)
        pu[sl] += hall * _window(hd, 5.6 + on, 6.1 + on, 21.8 + off, 22.3 + off)
    pu *= 1.0 + _slow_noise(rng, t, 600.0, 0.04)
    load = peak_kw * pu + peak_kw * rng.normal(0.0, 0.01, t.size)
    # e-trucks on their own 44 kW points, vans queueing for 11 or 22 kW points
    trucks = int(rng.integers(0, 4)) if peak_kw >= 250 else 0
    fleet_kw = float(rng.uniform(0.5, 0.8)) * peak_kw - 44.0 * trucks
    kw = 22.0 if rng.random() < 0.4 else 11.0
    chargers = max(2, round(fleet_kw / kw))
    vans = max(chargers, round(chargers / float(rng.uniform(0.45, 0.9))))
    van_kw = np.where(rng.random(vans) < 0.85, kw, 11.0 if kw > 11 else 7.4)
    fleet_share = {5: 0.3, 6: 0.5}  # Saturday and Sunday evenings
    spread = bool(rng.random() < 0.5)
    blocks: list[tuple[Arr, Arr, Arr]] = []
    first = tl.days[0]  # the evening before the first day, then every day's evening
    evenings: list[tuple[float, int, bool, _Day | None]] = [
        (first.start_t - 86400.0, first.prev_weekday, first.summer, first)
    ]
    evenings += [
        (day.start_t, day.weekday, day.summer, tl.days[k + 1] if k + 1 < len(tl.days) else None)
        for k, day in enumerate(tl.days)
    ]
    for offset, weekday, summer, morning in evenings:
        winter = 1.0 if summer else 1.2  # heating and cold batteries
        out = min(1.0, d.vary(1.0, "out", 0.85, 1.0, 0.05))  # vans out on the road that day
        share = fleet_share.get(weekday, 1.0) * out
        n_van, n_truck = max(1, round(vans * share)), round(trucks * share)
        late = float(rng.uniform(1.5, 3.0)) if weekday < 5 and d.chance(0.06) else 0.0
        leave = None
        if morning is not None and morning.weekday != 6:  # they leave the next morning (not on Sundays)
            leave = morning.wall_to_t(rng.uniform(5.0, 7.0, n_van + n_truck))
        van_kwh = rng.uniform(0.3, 0.9, n_van) * rng.uniform(40.0, 75.0, n_van) * winter
        van_leave = None if leave is None else leave[:n_van]
        blocks.append(
            _fleet(rng, offset, van_kw[:n_van], van_kwh, chargers, van_leave, spread=spread, late_h=late)
        )
        if n_truck:
            truck_kwh = rng.uniform(0.4, 0.8, n_truck) * rng.uniform(150.0, 350.0, n_truck) * winter
            truck_leave = None if leave is None else leave[n_van:]
            blocks.append(
                _fleet(
                    rng,
                    offset,
                    np.full(n_truck, 44.0),
                    truck_kwh,
                    n_truck,
                    truck_leave,
                    spread=spread,
                    late_h=late,
                )
            )
    for day in tl.days:
        if day.workday:  # midday top-ups
            top = np.flatnonzero(rng.random(vans) < 0.25)
            a = day.wall_to_t(rng.uniform(11.5, 14.0, top.size))
            blocks.append((a, a + rng.uniform(1200.0, 3000.0, top.size), van_kw[top]))
    if d.legacy:
        for starts, ends, power in blocks:
            load += _step_sum(t, starts, ends, power)
    else:  # one pass over the timeline for all sessions
        load += _step_sum(t, *(np.concatenate(parts) for parts in zip(*blocks, strict=True)))
    return load


def _bakery(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    pu = np.full_like(t, float(rng.uniform(0.1, 0.15)))
    sunday = d.legacy or d.habit("sunday", 0.0, 1.0) < 0.3  # bakes on some Sundays (or every one)
    bake: list[tuple[float, float, float] | None] = []  # per day: start, end, scale
    for day in tl.days:
        if day.weekday < 6 or (sunday and rng.random() < d.vary(0.3, "sundays", 0.5, 1.0)):
            scale = (1.0 if day.weekday < 6 else 0.5) * d.level()
            s = d.pick("start", 2.5, 3.5, 0.1) - (0.3 if day.weekday == 5 else 0.0)
            bake.append((s, d.pick("end", 9.5, 10.5, 0.15), scale))
        else:
            bake.append(None)
    baking = [(day, b) for day, b in zip(tl.days, bake, strict=True) if b is not None]
    if baking:
        active = np.zeros_like(t)
        for day, (s, e, _) in baking:
            hd = h[day.rows]
            active[day.rows] = ((hd >= s) & (hd < e)).astype(np.float64)
        for k in range(int(rng.integers(2, 4))):  # ovens
            share = float(rng.uniform(0.18, 0.3))
            amp = np.zeros_like(t)
            duty = np.full_like(t, 0.5)
            gate = np.zeros(t.size, dtype=np.bool_)
            for day, (s, e, scale) in baking:
                sl, hd = day.rows, h[day.rows]
                amp[sl] = share * scale
                duty[sl] = np.where(hd < s + 0.5, 0.95, d.pick(f"oven{k}-duty", 0.55, 0.75, 0.03))
                o_s = s + d.pick(f"oven{k}-on", 0.0, 0.4, 0.05)
                gate[sl] = (hd >= o_s) & (hd < e - d.pick(f"oven{k}-off", 0.0, 0.5, 0.05))
            pu += amp * _cycler(rng, t, float(rng.uniform(240, 600)), duty) * gate
        mixers = _switching(rng, t, float(rng.uniform(300, 900)), float(rng.uniform(300, 1200)), 0.5)
        for day, (_, e, scale) in baking:
            sl, hd = day.rows, h[day.rows]
            mix = d.pick("mixers", 0.05, 0.15, 0.01) * scale
            pu[sl] += mix * mixers[sl] * active[sl] * (hd < 9.0)
            shop_end = d.pick("shop-end", 15.0, 16.0, 0.15)
            pu[sl] += (
                d.pick("shop", 0.15, 0.25, 0.01) * scale * _window(hd, e - 0.3, e, shop_end, shop_end + 0.3)
            )
    pu *= 1.0 + _slow_noise(rng, t, 600.0, 0.03)
    return peak_kw * pu + peak_kw * rng.normal(0.0, 0.01, t.size)


def _supermarket(d: _Draw, tl: _Timeline, peak_kw: float) -> Arr:
    rng, t, h = d.rng, tl.t, tl.hour
    pu = np.full_like(t, float(rng.uniform(0.28, 0.38)))
    for _ in range(2):  # refrigeration racks
        u = float(rng.random())
        duty_row = np.empty_like(t)
        for day in tl.days:
            lo, hi = (0.5, 0.7) if day.summer else (0.35, 0.55)
            doors = 0.1 * _window(h[day.rows], 7.5, 8.5, 20.5, 21.5)  # doors and shoppers warm the cabinets
            duty_row[day.rows] = lo + (hi - lo) * u + d.vary(0.0, "duty", 0.0, 0.0, 0.03) + doors
        pu += float(rng.uniform(0.08, 0.14)) * _cycler(rng, t, float(rng.uniform(600, 1200)), duty_row)
    sundays = d.legacy or d.habit("sunday", 0.0, 1.0) < 0.8  # open on Sundays
    for day in tl.days:
        sl, hd = day.rows, h[day.rows]
        open_h, close_h = (12.0, 18.0) if day.weekday == 6 else (8.0, 21.0)
        is_open = day.weekday != 6 or (sundays and (not d.legacy or rng.random() < 0.8))
        if is_open:
            level = d.level() * (d.vary(1.0, "saturday", 1.0, 1.15) if day.weekday == 5 else 1.0)
            store = d.pick("store", 0.28, 0.38, 0.01) * level
            pu[sl] += store * _window(hd, open_h - 1.0, open_h, close_h, close_h + 0.5)
            if day.summer:
                pu[sl] += d.pick("cooling", 0.04, 0.1, 0.02) * _window(hd, 11.0, 13.0, 18.0, 20.0)
            else:
                pu[sl] += d.pick("heating", 0.03, 0.07, 0.01) * _window(
                    hd, open_h - 1.5, open_h - 1.0, 11.0, 12.0
                )
    pu *= 1.0 + _slow_noise(rng, t, 900.0, 0.02)
    return peak_kw * pu + peak_kw * rng.normal(0.0, 0.008, t.size)


_LOAD: dict[str, Callable[[_Draw, _Timeline, float], Arr]] = {
    "office": _office,
    "cold-store": _cold_store,
    "metal-workshop": _metal_workshop,
    "logistics": _logistics,
    "bakery": _bakery,
    "supermarket": _supermarket,
}


# ---------------------------------------------------------------- PV and sky
def _pv_clear_pu(rng: np.random.Generator, elev_deg: Arr, az_deg: Arr) -> Arr:
    """Clear-sky output per unit of peak for a random field layout."""
    layout = int(rng.integers(0, 4))
    if layout == 0:  # flat roof, low tilt south
        fields = [(180.0, float(rng.uniform(3.0, 8.0)), 1.0)]
    elif layout == 1:
        fields = [(float(rng.uniform(160.0, 200.0)), float(rng.uniform(15.0, 35.0)), 1.0)]
    elif layout == 2:
        a, tilt = float(rng.uniform(80.0, 100.0)), float(rng.uniform(8.0, 15.0))
        w = float(rng.uniform(0.35, 0.65))
        fields = [(a, tilt, w), (a + 180.0, tilt, 1.0 - w)]
    else:
        az = float(rng.choice([rng.uniform(110.0, 140.0), rng.uniform(220.0, 250.0)]))
        fields = [(az, float(rng.uniform(10.0, 25.0)), 1.0)]
    e = np.radians(elev_deg)
    up = elev_deg > 0.0
    sin_e = np.where(up, np.sin(e), 0.0)
    e_pos = np.maximum(elev_deg, 0.0)
    air_mass = 1.0 / (np.maximum(sin_e, 0.0) + 0.50572 * (e_pos + 6.07995) ** -1.6364)
    direct = 0.7 ** (air_mass**0.678 - 1.0)
    poa = np.zeros_like(e)
    for az_p, tilt, w in fields:
        b = math.radians(tilt)
        cos_aoi = sin_e * math.cos(b) + np.cos(e) * math.sin(b) * np.cos(np.radians(az_deg - az_p))
        poa += w * np.maximum(cos_aoi, 0.0)
    pu = 0.8 * (0.85 * direct * poa + 0.15 * sin_e) * float(rng.uniform(0.95, 1.02))
    return np.where(up, np.clip(pu, 0.0, 1.0), 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Clouds:
    starts: Arr
    ends: Arr
    depth: Arr  # transmission inside the cloud, 0.2..0.4
    enhance: Arr  # factor after the edge (1 = none)
    enhance_s: Arr


def _clouds(rng: np.random.Generator, t: Arr, hour: Arr) -> _Clouds:
    """Cumulus over the park for one day (rows t, local hours hour)."""
    mean_gap = float(rng.uniform(120.0, 480.0))
    s, starts, ends = float(t[0]) - 600.0, [], []
    while s < float(t[-1]) + 600:
        h = float(np.interp(s, t, hour))
        quiet = 3.0 if (h < 9.0 or h > 19.0) else 1.0  # cumulus builds up during the day
        s += 20.0 + float(rng.exponential(mean_gap * quiet))
        length = float(np.exp(rng.uniform(math.log(30.0), math.log(600.0))))
        starts.append(s)
        ends.append(s + length)
        s += length
    n = len(starts)
    gaps = np.diff(np.array([*starts, math.inf])) - np.array(ends) + np.array(starts)
    enh = np.where(rng.random(n) < 0.4, rng.uniform(1.05, 1.18, n), 1.0)
    return _Clouds(
        starts=np.array(starts),
        ends=np.array(ends),
        depth=rng.uniform(0.2, 0.4, n),
        enhance=enh,
        enhance_s=np.minimum(rng.uniform(10.0, 60.0, n), gaps),
    )


def _broken_transmission(rng: np.random.Generator, t: Arr, clouds: _Clouds) -> Arr:
    """Transmission at one company: the park's clouds, lagged and some missed."""
    tt = t - float(rng.uniform(0.0, 120.0))
    hit = rng.random(clouds.starts.size) < 0.85
    k = np.searchsorted(clouds.starts, tt, side="right") - 1
    kk = np.maximum(k, 0)
    valid = (k >= 0) & hit[kk]
    inside = valid & (tt < clouds.ends[kk])
    after = valid & ~inside & (tt < clouds.ends[kk] + clouds.enhance_s[kk])
    wobble = np.clip(clouds.depth[kk] + rng.normal(0.0, 0.01, t.size), 0.2, 0.4)
    return np.where(inside, wobble, np.where(after, clouds.enhance[kk], 1.0))


@dataclasses.dataclass(frozen=True, slots=True)
class _Weather:
    """Each day's sky and what the park shares of it (clouds, or the overcast level)."""

    skies: tuple[str, ...]
    clouds: dict[int, _Clouds]
    overcast: dict[int, Arr]


def _weather(rng: np.random.Generator, sky: str, tl: _Timeline) -> _Weather:
    skies: list[str] = []
    for day in tl.days:
        if sky != "mixed":
            skies.append(sky)
        elif skies and rng.random() < _SKY_KEEP:
            skies.append(skies[-1])
        else:
            skies.append(SKIES[int(rng.choice(len(SKIES), p=np.array(_SKY_P[day.summer])))])
    clouds: dict[int, _Clouds] = {}
    overcast: dict[int, Arr] = {}
    for k, (day, s) in enumerate(zip(tl.days, skies, strict=True)):
        t = tl.t[day.rows]
        if s == "broken":
            clouds[k] = _clouds(rng, t, tl.hour[day.rows])
        elif s == "overcast":
            u = _slow_noise(rng, t, float(rng.uniform(1200.0, 2400.0)), 1.0)
            overcast[k] = 0.15 + 0.25 * _smoothstep(u, -1.5, 1.5)
    return _Weather(skies=tuple(skies), clouds=clouds, overcast=overcast)


def _transmission(rng: np.random.Generator, tl: _Timeline, weather: _Weather) -> Arr:
    """What one company's PV field gets of its clear-sky output, per row."""
    trans = np.empty_like(tl.t)
    for k, day in enumerate(tl.days):
        t = tl.t[day.rows]
        if k in weather.clouds:
            trans[day.rows] = _broken_transmission(rng, t, weather.clouds[k])
        elif k in weather.overcast:
            trans[day.rows] = weather.overcast[k] * (1.0 + _slow_noise(rng, t, 600.0, 0.02))
        else:
            trans[day.rows] = np.clip(1.0 - np.abs(_slow_noise(rng, t, 1800.0, 0.01)), 0.95, 1.0)
    return trans


@dataclasses.dataclass(frozen=True, slots=True)
class _Batteries:
    """Parallel arrays, one entry per battery."""

    capacity_kwh: Arr
    max_kw: Arr
    soc_pct: Arr
    efficiency: Arr
    charge_kw: Arr | None = None  # a lower charge limit than max_kw (the greedy check only)

    @classmethod
    def of(cls, blocks: list[dict[str, Any]]) -> _Batteries:
        def col(key: str) -> Arr:
            return np.array([float(b[key]) for b in blocks], dtype=np.float64)

        return cls(col("capacity_kwh"), col("max_discharge_kw"), col("soc_pct"), col("efficiency"))

    @classmethod
    def of_sets(cls, sets: Sequence[Sequence[dict[str, Any]]]) -> _Batteries:
        """One set of batteries per candidate (rows), padded with empty ones."""
        width = max([1, *(len(s) for s in sets)])

        def col(key: str, pad: float) -> Arr:
            return np.array([[float(b[key]) for b in s] + [pad] * (width - len(s)) for s in sets])

        return cls(
            col("capacity_kwh", 0.0),
            col("max_discharge_kw", 0.0),
            col("soc_pct", 0.0),
            col("efficiency", 1.0),
        )


def _greedy(
    net: Arr, cap: Arr, bats: _Batteries, dt_h: float, *, want_power: bool = False
) -> tuple[BoolArr, Arr]:
    """Greedy check of candidate caps cap[k, j] (candidates x blocks) against the
    net load net[j], with the same batteries for every candidate or (2-D
    arrays) a set per candidate. Returns (feasible per candidate, battery kW
    per candidate and block if want_power, + discharge)."""
    n_cand, n_blk = cap.shape
    cap_kwh = bats.capacity_kwh
    eff = bats.efficiency
    e_min = cap_kwh * (0.05 + _RESERVE_FRACTION * 0.9)
    e_max = cap_kwh * 0.95
    dis_scale = eff / dt_h  # kWh above the reserve -> kW for one block
    ch_scale = 1.0 / (eff * dt_h)
    ch_max = _CHARGE_MARGIN * (bats.max_kw if bats.charge_kw is None else bats.charge_kw)
    energy = np.broadcast_to(cap_kwh * bats.soc_pct / 100.0, (n_cand, cap_kwh.shape[-1])).copy()
    ok = np.ones(n_cand, dtype=np.bool_)
    power = np.zeros((n_cand, n_blk if want_power else 0))
    zeros = np.zeros(n_cand)
    for j in range(n_blk):
        need = net[j] - cap[:, j]
        avail = np.maximum(np.minimum(bats.max_kw, (energy - e_min) * dis_scale), 0.0)
        total = avail.sum(axis=1)
        ok &= need <= _DISCHARGE_MARGIN * total + 1e-9
        share = np.divide(np.maximum(need, 0.0), total, out=zeros.copy(), where=total > 0)
        take = avail * np.minimum(share, 1.0)[:, None]
        accept = np.maximum(np.minimum(ch_max, (e_max - energy) * ch_scale), 0.0)
        room = accept.sum(axis=1)
        frac = np.divide(_CHARGE_MARGIN * np.maximum(-need, 0.0), room, out=zeros.copy(), where=room > 0)
        charge = accept * np.minimum(frac, 1.0)[:, None]
        energy += (charge * eff - take / eff) * dt_h
        if want_power:
            power[:, j] = take.sum(axis=1) - charge.sum(axis=1)
    return ok, power


def _blocks(n_rows: int, step_s: int) -> npt.NDArray[np.intp]:
    size = max(1, round(_BLOCK_S / step_s))
    return np.arange(0, n_rows, size)


def _lowest_feasible(
    net_rows: Arr,
    lo: float,
    hi: float,
    bats: _Batteries,
    step_s: int,
    fixed_rows: Arr | None = None,
    *,
    want_power: bool = False,
) -> tuple[float, Arr]:
    """The lowest cap in [lo, hi] (a grid of candidates) that the batteries can
    hold; with fixed_rows, the candidate applies only where fixed_rows is NaN
    (a window) and fixed_rows elsewhere. Returns (cap, battery kW per row if
    want_power, + discharge)."""
    idx = _blocks(net_rows.size, step_s)
    net = np.maximum.reduceat(net_rows, idx)
    dt_h = (idx[1] - idx[0] if idx.size > 1 else 1) * step_s / 3600.0
    cand = np.linspace(lo, max(hi, lo), _CANDIDATES)
    if fixed_rows is None:
        cap = np.broadcast_to(cand[:, None], (cand.size, idx.size))
    else:
        free = np.logical_or.reduceat(np.isnan(fixed_rows), idx)
        fixed = np.minimum.reduceat(np.nan_to_num(fixed_rows, nan=math.inf), idx)
        cap = np.where(free[None, :], np.minimum(cand[:, None], fixed[None, :]), fixed[None, :])
    ok, _ = _greedy(net, np.ascontiguousarray(cap), bats, dt_h)
    k = int(np.argmax(ok)) if ok.any() else cand.size - 1
    if not want_power:
        return float(cand[k]), np.zeros_like(net_rows)
    _, power = _greedy(net, np.ascontiguousarray(cap[k : k + 1]), bats, dt_h, want_power=True)
    return float(cand[k]), np.repeat(power[0], np.diff(np.append(idx, net_rows.size)))


def _ceil5(x: float) -> int:
    return int(5 * math.ceil(x / 5.0 - 1e-9))


def _floor5(x: float) -> int:
    return int(5 * math.floor(x / 5.0 + 1e-9))


def _hhmm_s(text: str) -> float:
    hh, mm = text.split(":")
    return int(hh) * 3600.0 + int(mm) * 60.0


def _window_mask(hour: Arr, window: tuple[str, str]) -> BoolArr:
    """Rows whose local time lies in [start, end) (wrapping midnight if start > end)."""
    sod = np.mod(hour * 3600.0, 86400.0)
    s, e = _hhmm_s(window[0]), _hhmm_s(window[1])
    mask: BoolArr = (sod >= s) & (sod < e) if s <= e else (sod >= s) | (sod < e)
    return mask


def _export_cap(
    rng: np.random.Generator, net: Arr, room_kwh: float, pv_peak_kw: float, step_s: int, days: list[slice]
) -> int:
    surplus = float(np.max(-net))
    if surplus < 20.0:
        return _ceil5(max(surplus, 0.3 * pv_peak_kw, 20.0) * 1.1)
    if room_kwh <= 0:
        return max(5, _floor5(float(rng.uniform(0.5, 0.85)) * surplus))
    cand = np.linspace(0.3, 0.8, 51) * surplus
    # the surplus energy above the cap on the day with the most of it
    over_kwh = (
        np.max([np.clip(-net[None, sl] - cand[:, None], 0.0, None).sum(axis=1) for sl in days], axis=0)
        * step_s
        / 3600.0
    )
    target = float(rng.uniform(0.6, 1.6)) * room_kwh
    c = float(cand[int(np.argmin(np.abs(over_kwh - target)))])
    return max(5, _floor5(c))


def _energy_floor(net: Arr, days: list[slice]) -> float:
    """The lowest cap at which every day has the room below the cap to recharge
    what the batteries give above it (with losses and margins), ignoring power."""
    cand = np.linspace(0.0, max(float(np.max(net)), 1.0), 101)
    ok = np.ones(cand.size, dtype=np.bool_)
    for sl in days:
        d = net[None, sl] - cand[:, None]
        ok &= np.clip(d, 0.0, None).sum(axis=1) <= 0.8 * np.clip(-d, 0.0, None).sum(axis=1)
    return float(cand[int(np.argmax(ok))]) if ok.any() else float(cand[-1])


def _scaled(b: dict[str, Any], factor: float) -> dict[str, Any]:
    capacity = min(1000, int(10 * round(b["capacity_kwh"] * factor / 10)))
    power = int(5 * round(b["max_discharge_kw"] * capacity / b["capacity_kwh"] / 5))
    return b | {"capacity_kwh": capacity, "max_charge_kw": power, "max_discharge_kw": power}


def _usable_kwh(blocks: Sequence[dict[str, Any]]) -> float:
    """What batteries hold above their minimum SoC."""
    return float(sum((b["soc_pct"] - b["min_soc_pct"]) / 100.0 * b["capacity_kwh"] for b in blocks))


def _battery_ladder(
    rng: np.random.Generator, park: list[_Company], peak_kw: float
) -> list[dict[int, dict[str, Any]]]:
    """Battery sets for the park's companies (index -> battery), smallest first:
    as drawn, then scaled 1.5x twice (each at most 1000 kWh), then one more
    battery at a time at a company without one, until they store 2.5 h of the peak."""
    spare = [int(k) for k in rng.permutation(len(park)) if park[int(k)].battery is None]
    current = {k: c.battery for k, c in enumerate(park) if c.battery is not None}
    ladder = [dict(current)] if current else []
    scaled = 0
    while sum(b["capacity_kwh"] for b in current.values()) < _MAX_PARK_STORAGE_H * peak_kw:
        if current and scaled < 2 and any(b["capacity_kwh"] < 1000 for b in current.values()):
            scaled += 1
            current = {k: _scaled(b, 1.5) for k, b in current.items()}
        elif spare:
            current[spare.pop(0)] = _battery(rng)
        else:
            break
        ladder.append(dict(current))
    return ladder


def _morning_ramp_cap(
    rng: np.random.Generator,
    net: Arr,
    raw_net: Arr,
    hour: Arr,
    days: list[tuple[slice, bool]],
    companies: list[_Company],
    own: set[int],
    step_s: int,
) -> int:
    """The import cap for import_cap='morning-ramp' (module docstring); grows the
    park's batteries where needed and sets their SoC at the start."""
    peak = float(np.max(raw_net))
    mornings = [
        sl.start + np.flatnonzero((hour[sl] >= _MORNING[0]) & (hour[sl] < _MORNING[1]))
        for sl, workday in days
        if workday
    ]
    level = min(float(np.percentile(raw_net[rows], 75)) for rows in mornings)
    floor = _energy_floor(net, [sl for sl, _ in days])
    target = max(5, _ceil5(min(max(float(rng.uniform(0.4, 0.75)) * peak, 1.05 * floor), 0.85 * level)))
    top = max(peak, float(np.max(net)))
    park = [c for i, c in enumerate(companies) if i not in own]
    ladder = _battery_ladder(rng, park, peak)
    if not ladder:  # a park that never imports
        return _ceil5(max(top, 1.0))
    own_kwh = _usable_kwh([c.battery for i, c in enumerate(companies) if i in own and c.battery is not None])

    def start_soc(cap_kw: int, bats: Iterable[dict[str, Any]]) -> int:
        """The highest common start SoC at which all batteries hold less than 80 % of
        what the first working morning needs above cap_kw (a lower cap needs more)."""
        need = float(np.sum(np.clip(raw_net[mornings[0]] - cap_kw, 0.0, None))) * step_s / 3600.0
        capacity = float(sum(b["capacity_kwh"] for b in bats))
        return max(_LOW_SOC_PCT, min(60, math.floor(5 + 100.0 * (need / 1.25 - own_kwh) / capacity)))

    def started(cap_kw: int, bats: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        soc = start_soc(cap_kw, bats)
        return [b | {"soc_pct": soc} for b in bats]

    def feasible(cap_kw: Sequence[int], sets: Sequence[Sequence[dict[str, Any]]]) -> BoolArr:
        """The greedy check of cap k with battery set k."""
        idx = _blocks(net.size, step_s)
        dt_h = (idx[1] - idx[0] if idx.size > 1 else 1) * step_s / 3600.0
        caps = np.repeat(np.array(cap_kw, dtype=np.float64)[:, None], idx.size, axis=1)
        ok, _ = _greedy(np.maximum.reduceat(net, idx), caps, _Batteries.of_sets(sets), dt_h)
        return ok

    # the smallest battery set that holds the target, else the largest and the lowest cap it holds
    sets = [list(bats.values()) for bats in ladder]
    ok = feasible([target] * len(sets), [started(target, s) for s in sets])
    k = int(np.argmax(ok)) if ok.any() else len(sets) - 1
    import_cap = target
    if not ok.any():
        cand = sorted({_ceil5(x) for x in np.linspace(target, top, _CANDIDATES)})
        ok = feasible(cand, [started(c, sets[k]) for c in cand])
        import_cap = cand[int(np.argmax(ok))] if ok.any() else _ceil5(top)
    for j, c in enumerate(park):
        c.battery = ladder[k].get(j)
    blocks = sets[k]
    top_soc = start_soc(import_cap, blocks)
    socs = [int(rng.integers(_LOW_SOC_PCT, top_soc + 1)) for _ in blocks]
    if not feasible([import_cap], [[b | {"soc_pct": soc} for b, soc in zip(blocks, socs, strict=True)]])[0]:
        socs = [top_soc] * len(blocks)  # as checked above
    for b, soc in zip(blocks, socs, strict=True):
        b["soc_pct"] = soc
    return import_cap


# ---------------------------------------------------------------- the generator
@dataclasses.dataclass(slots=True)
class _Company:
    cid: str
    kind: str
    peak_kw: float
    load: Arr  # scenario rows
    pv: Arr
    history_load: Arr  # history samples (60 s)
    history_pv: Arr
    pv_peak_kw: int = 0
    battery: dict[str, Any] | None = None
    import_limit_kw: int | None = None
    export_limit_kw: int | None = None


def _kinds(rng: np.random.Generator, n: int) -> list[str]:
    first = [str(k) for k in rng.permutation(np.array(ARCHETYPES))[: min(n, len(ARCHETYPES))]]
    extra = rng.choice(len(ARCHETYPES), size=max(0, n - len(ARCHETYPES)), p=np.array(_EXTRA_WEIGHTS))
    return first + [ARCHETYPES[int(i)] for i in extra]


def _battery(rng: np.random.Generator) -> dict[str, Any]:
    capacity = int(10 * round(float(rng.uniform(100.0, 1000.0)) / 10))
    power = int(5 * round(capacity * float(rng.uniform(0.5, 1.0)) / 5))
    return {
        "capacity_kwh": capacity,
        "max_charge_kw": power,
        "max_discharge_kw": power,
        "soc_pct": int(rng.integers(20, 81)),
        "min_soc_pct": 5,
        "max_soc_pct": 95,
        "efficiency": round(float(rng.uniform(0.92, 0.96)), 3),
        "ramp_pct_per_s": 50,
    }


def _round(x: Arr) -> Arr:
    return np.maximum(np.round(x, 2), 0.0) + 0.0


def _own_caps(rng: np.random.Generator, c: _Company, step_s: int, charge_share: float = 1.0) -> Arr:
    """Give c its own caps; return its grid power (kW per row) as the park check sees
    it (its battery recharging at most at charge_share of its power)."""
    net = c.load - c.pv
    peak = float(np.max(net))
    bat_rows = np.zeros_like(net)
    if c.battery is not None:
        bats = _Batteries.of([c.battery])
        if charge_share < 1.0:
            bats = dataclasses.replace(bats, charge_kw=charge_share * bats.max_kw)
        target = float(rng.uniform(0.85, 0.95)) * peak
        cap, bat_rows = _lowest_feasible(net, target, peak, bats, step_s, want_power=True)
        c.import_limit_kw = _ceil5(cap)
    else:
        c.import_limit_kw = _ceil5(float(rng.uniform(1.0, 1.05)) * peak)
    surplus = float(np.max(-net))
    if surplus >= 10.0:
        c.export_limit_kw = max(5, _floor5(float(rng.uniform(0.5, 0.9)) * surplus))
    else:
        c.export_limit_kw = _ceil5(max(10.0, 0.25 * c.peak_kw, 1.1 * surplus))
    return np.maximum(net - bat_rows, -float(c.export_limit_kw))


def _sharing(rng: np.random.Generator, key: str, ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "interval_s": 900}
    if key == "static":
        raw = rng.dirichlet(np.full(len(ids), 2.0)) * float(rng.uniform(0.85, 1.0))
        floored = np.floor(raw * 100.0) / 100.0
        out["shares"] = {cid: round(float(s), 2) for cid, s in zip(ids, floored, strict=True) if s > 0}
    elif key == "priority":
        order = [ids[int(i)] for i in rng.permutation(len(ids))]
        out["order"] = order[: max(1, math.ceil(2 * len(ids) / 3))]
    return out


def generate(opts: GenOptions) -> tuple[dict[str, Any], list[str], Arr]:
    """A synthetic park run: (scenario.yaml as a dict, profiles.csv header, rows).
    See generate_run for the history as well."""
    run = generate_run(opts)
    return run.scenario, run.header, run.rows


def generate_run(opts: GenOptions) -> GeneratedRun:
    """A synthetic park run: scenario.yaml as a dict, profiles.csv and, with
    `history_days`, history.csv (SCENARIOS.md)."""
    tl = _timeline(opts)
    layout = np.random.default_rng([opts.seed, 0])
    weather_rng = np.random.default_rng([opts.seed, 1])
    caps_rng = np.random.default_rng([opts.seed, 2])

    kinds = _kinds(layout, opts.companies)
    n_bat = round(opts.battery_share * opts.companies)
    has_bat = set(layout.permutation(opts.companies)[:n_bat].tolist())
    counters: dict[str, int] = {}
    elev, az = solar_position(tl.utc_s)
    weather = _weather(weather_rng, opts.sky, tl)
    n_hist = tl.history_rows
    companies: list[_Company] = []
    for i, kind in enumerate(kinds):
        counters[kind] = counters.get(kind, 0) + 1
        rng = np.random.default_rng([opts.seed, 100 + i])
        lo, hi = _SIZE_KW[kind]
        peak = float(rng.uniform(lo, hi))
        draw = _Draw(
            np.random.default_rng([opts.seed, 1000 + i]), legacy=tl.legacy, habit_seed=[opts.seed, 3000 + i]
        )
        load = _round(_LOAD[kind](draw, tl, peak))
        pv = np.zeros_like(load)
        has_pv = rng.random() < opts.pv_fraction or i == 0
        pv_base = min(500.0, float(rng.uniform(1.0, 2.5)) * peak)
        pv_peak_kw = round(pv_base * opts.pv_share) if has_pv else 0
        clear = _pv_clear_pu(rng, elev, az)
        if pv_peak_kw >= 1:
            sky_rng = np.random.default_rng([opts.seed, 2000 + i])
            trans = _transmission(sky_rng, tl, weather)
            jitter = 1.0 + sky_rng.normal(0.0, 0.003, tl.t.size)
            pv = _round(np.clip(pv_peak_kw * clear * trans * jitter, 0.0, pv_peak_kw))
        else:
            pv_peak_kw = 0
        c = _Company(
            cid=f"{kind}-{counters[kind]}",
            kind=kind,
            peak_kw=peak,
            load=load[n_hist:],
            pv=pv[n_hist:],
            history_load=load[:n_hist],
            history_pv=pv[:n_hist],
            pv_peak_kw=pv_peak_kw,
        )
        if i in has_bat:
            c.battery = _battery(rng)
        companies.append(c)

    park = _park_caps(caps_rng, opts, tl, companies)
    ids = [c.cid for c in companies]
    scenario: dict[str, Any] = {
        "name": opts.default_name,
        "start": tl.start.isoformat(),
        "timezone": TIMEZONE,
        "location": {"lat": LAT_DEG, "lon": LON_DEG},
        "duration_s": tl.duration_s,
        "step_s": 1,
        "profiles": "profiles.csv",
    }
    if opts.history_days:
        scenario["history"] = "history.csv"
    scenario |= {
        "measurement_delay_s": 1,
        "park": park,
        "companies": [_company_yaml(c) for c in companies],
        "sharing": _sharing(layout, opts.sharing_key, ids),
    }
    header = ["t_s"] + [f"{cid}.{col}" for cid in ids for col in ("load_kw", "pv_kw")]
    rows = np.column_stack([tl.t[n_hist:]] + [a for c in companies for a in (c.load, c.pv)])
    if not opts.history_days:
        return GeneratedRun(scenario, header, rows)
    per_quarter = HISTORY_STEP_S // _HISTORY_SAMPLE_S
    t_q = tl.days[0].start_t + HISTORY_STEP_S * np.arange(n_hist // per_quarter, dtype=np.float64)
    means = [
        np.round(a.reshape(-1, per_quarter).mean(axis=1), 2) + 0.0
        for c in companies
        for a in (c.history_load, c.history_pv)
    ]
    return GeneratedRun(scenario, header, rows, list(header), np.column_stack([t_q, *means]))


def _park_caps(
    rng: np.random.Generator, opts: GenOptions, tl: _Timeline, companies: list[_Company]
) -> dict[str, Any]:
    raw_net = np.sum([c.load - c.pv for c in companies], axis=0)
    if opts.import_cap == "morning-ramp":  # batteries emptied the evening before
        for c in companies:
            if c.battery is not None:
                c.battery["soc_pct"] = _LOW_SOC_PCT
    own: set[int] = set()
    if opts.company_caps:
        with_bat = [i for i, c in enumerate(companies) if c.battery is not None]
        first = [int(rng.choice(with_bat))] if with_bat else []
        rest = [i for i in range(len(companies)) if i not in first]
        pick = first + [int(i) for i in rng.permutation(np.array(rest, dtype=np.int64))]
        own = set(pick[:2])
    net = np.zeros_like(raw_net)
    park_bats: list[dict[str, Any]] = []
    for i, c in enumerate(companies):
        if i in own:
            slow = _OWN_CHARGE_SHARE if opts.import_cap == "morning-ramp" else 1.0  # the night is the park's
            net += _own_caps(rng, c, opts.step_s, slow)
        else:
            net += c.load - c.pv
            if c.battery is not None:
                park_bats.append(c.battery)
    days = [tl.scenario_slice(day) for day in tl.scenario_days]
    hour = tl.hour[tl.history_rows :]
    if opts.import_cap == "morning-ramp":
        workdays = [day.workday for day in tl.scenario_days]
        day_kinds = list(zip(days, workdays, strict=True))
        import_cap = _morning_ramp_cap(rng, net, raw_net, hour, day_kinds, companies, own, opts.step_s)
        park_bats = [c.battery for i, c in enumerate(companies) if i not in own and c.battery is not None]
    else:
        peak = float(np.max(raw_net))
        target = float(rng.uniform(0.85, 0.95)) * peak
        top = max(peak, float(np.max(net)))
        base, _ = _lowest_feasible(net, target, top, _Batteries.of(park_bats), opts.step_s)
        import_cap = _ceil5(max(base, 1.0))
    bats = _Batteries.of(park_bats)
    room = sum(
        (b["max_soc_pct"] - b["soc_pct"]) / 100.0 * b["capacity_kwh"]
        for b in (c.battery for c in companies)
        if b is not None
    )
    pv_peak = float(sum(c.pv_peak_kw for c in companies))
    export_cap = _export_cap(rng, raw_net, room, pv_peak, opts.step_s, days)
    park: dict[str, Any] = {"import_limit_kw": import_cap, "export_limit_kw": export_cap}
    if opts.import_window is not None:
        mask = _window_mask(hour, opts.import_window)
        fixed = np.where(mask, np.nan, float(import_cap))
        low, _ = _lowest_feasible(net, 0.2 * import_cap, float(import_cap), bats, opts.step_s, fixed)
        start, end = opts.import_window
        window_cap = min(import_cap, _ceil5(low))
        park["windows"] = [{"start": start, "end": end, "import_limit_kw": window_cap}]
    return park


def _company_yaml(c: _Company) -> dict[str, Any]:
    out: dict[str, Any] = {"id": c.cid}
    if c.import_limit_kw is not None:
        out["import_limit_kw"] = c.import_limit_kw
    if c.export_limit_kw is not None:
        out["export_limit_kw"] = c.export_limit_kw
    if c.pv_peak_kw > 0:
        out["pv"] = {"peak_kw": c.pv_peak_kw, "ramp_pct_per_s": 10}
    if c.battery is not None:
        out["battery"] = dict(c.battery)
    return out


def write_scenario(opts: GenOptions, directory: Path, name: str | None = None) -> Path:
    """Write scenario.yaml, profiles.csv and (with history_days) history.csv into
    directory (created if needed); name replaces the generated scenario name.
    Returns the path of scenario.yaml."""
    run = generate_run(opts)
    scenario = run.scenario
    if name is not None:
        scenario["name"] = name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    yaml_path = directory / "scenario.yaml"
    yaml_path.write_text(yaml.safe_dump(scenario, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tables = [(scenario["profiles"], run.header, run.rows)]
    if run.history_header is not None and run.history_rows is not None:
        tables.append((scenario["history"], run.history_header, run.history_rows))
    for file, header, rows in tables:
        fmt = ["%d"] + ["%.2f"] * (len(header) - 1)
        np.savetxt(directory / file, rows, fmt=fmt, delimiter=",", header=",".join(header), comments="")
    return yaml_path
