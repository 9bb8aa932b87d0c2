"""Site configuration: the park, its companies, the sharing key and the control parameters.

One YAML file describes a site. It is validated by the pydantic models below
(`extra="forbid"`, frozen, units in field names); `hubctl check-config FILE`
prints every problem with its field path and exits 78 (EX_CONFIG), and
`hubctl schema` prints the JSON schema generated from these models.

Sign convention everywhere (SCENARIOS.md): grid power + import / - export,
battery power + discharge / - charge, PV power >= 0.

Limits: `import_limit_kw` / `export_limit_kw` are the contracted caps. Daily
`windows` (local time, `[start, end)`, `end` may be "24:00", a window with
start > end runs across midnight) replace the limits they name; day-specific
`schedules` (one date each, e.g. a capacity-limitation call announced a day
ahead) add windows for that date only. Where several windows or schedules are
active the lowest limit holds (see `hubctl.core.limits`).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from hubctl.config.base import FrozenModel as _Model
from hubctl.config.base import Slug, load_yaml, parse_model
from hubctl.config.devices import Device, DeviceRole
from hubctl.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

PowerKw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Pct = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


def hhmm_to_s(text: str) -> int:
    """ "16:30" -> 59400; "24:00" -> 86400."""
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


class Hours(_Model):
    """A daily span of local time, `[start, end)`; start later than end runs across midnight."""

    start: str = Field(description='local time "HH:MM"')
    end: str = Field(description='local time "HH:MM" or "24:00"; earlier than start runs across midnight')

    @field_validator("start", "end")
    @classmethod
    def _is_hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f'{value!r} is not a local time "HH:MM" (00:00 to 24:00)')
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError("needs start != end")
        if self.start == "24:00":
            raise ValueError('cannot start at "24:00"')
        return self

    @property
    def start_s(self) -> int:
        return hhmm_to_s(self.start)

    @property
    def end_s(self) -> int:
        return hhmm_to_s(self.end)


class Window(Hours):
    """A daily time window (local time) that replaces the limits it names."""

    import_limit_kw: PowerKw | None = None
    export_limit_kw: PowerKw | None = None

    @model_validator(mode="after")
    def _names_a_limit(self) -> Self:
        if self.import_limit_kw is None and self.export_limit_kw is None:
            raise ValueError("a window must name import_limit_kw, export_limit_kw or both")
        return self


class DaySchedule(_Model):
    """Windows that apply on one local date only (a day-ahead call of the grid operator)."""

    date: dt.date
    windows: list[Window] = Field(min_length=1)


class Caps(_Model):
    """Import and export caps of a connection (the park's group cap or a company's own)."""

    import_limit_kw: PowerKw | None = None
    export_limit_kw: PowerKw | None = None
    windows: list[Window] = Field(default_factory=list)
    schedules: list[DaySchedule] = Field(default_factory=list)

    @field_validator("schedules")
    @classmethod
    def _one_schedule_per_date(cls, value: list[DaySchedule]) -> list[DaySchedule]:
        dates = [s.date for s in value]
        dup = sorted({d for d in dates if dates.count(d) > 1})
        if dup:
            raise ValueError(f"more than one schedule for {', '.join(map(str, dup))}")
        return value

    @property
    def has_caps(self) -> bool:
        return (
            self.import_limit_kw is not None
            or self.export_limit_kw is not None
            or bool(self.windows)
            or bool(self.schedules)
        )


class Connection(StrEnum):
    """How the park meets the grid: where the park caps are judged (deploy/README.md, "Park connections")."""

    SHARED = "shared"  # one connection for the park: its park meter is the truth, sub-meters split it
    GROUP = "group"  # a group contract over the companies' own connections: the cap is on their netted sum


_TOLERANCE_SHARE = 0.05  # of the park's largest cap: the default park meter disagreement tolerance
_TOLERANCE_MIN_KW = 5.0


class Park(Caps):
    """The park's group caps and the connection they are on."""

    connection: Connection | None = Field(
        default=None,
        description="shared: one connection whose park_meter device the caps are held on; group: a group "
        "contract over the companies' own connections, the caps on the sum of their meters. Default: "
        "shared when a park_meter device is configured, else group",
    )
    meter_tolerance_kw: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="shared connection: the park meter may differ from the companies' meters summed by "
        "this much (common loads, losses) before it is logged and published as a disagreement, and a "
        "sub-meter's large step agree with the park meter (more than 0: two real meters never agree "
        "exactly). Default: 5 % of the park's largest cap, at least 5 kW",
    )

    def meter_tolerance(self) -> float:
        """The disagreement tolerance in force (kW): the configured one, or the default."""
        if self.meter_tolerance_kw is not None:
            return self.meter_tolerance_kw
        caps = [self.import_limit_kw, self.export_limit_kw]
        caps += [w.import_limit_kw for w in self.windows] + [w.export_limit_kw for w in self.windows]
        largest = max((c for c in caps if c is not None), default=0.0)
        return max(_TOLERANCE_MIN_KW, _TOLERANCE_SHARE * largest)


class Pv(_Model):
    peak_kw: float = Field(gt=0, allow_inf_nan=False, description="DC/AC peak power the limit is a share of")
    ramp_pct_per_s: float = Field(default=10.0, gt=0, le=100, description="of peak_kw per second")


class Battery(_Model):
    capacity_kwh: float = Field(gt=0, allow_inf_nan=False)
    max_charge_kw: float = Field(gt=0, allow_inf_nan=False)
    max_discharge_kw: float = Field(gt=0, allow_inf_nan=False)
    soc_pct: Pct = Field(default=50.0, description="initial state of charge (simulation only)")
    min_soc_pct: Pct = 5.0
    max_soc_pct: Pct = 95.0
    efficiency: float = Field(default=0.95, gt=0.5, le=1.0, description="one way")
    ramp_pct_per_s: float = Field(default=50.0, gt=0, le=100, description="of max(charge, discharge) per s")
    reserve_soc_pct: Pct | None = Field(
        default=None,
        description="state of charge kept for unforeseen import peaks when the controller has no load "
        "history for the coming hours; default: control.default_reserve_soc_pct",
    )

    @model_validator(mode="after")
    def _soc_order(self) -> Self:
        if not self.min_soc_pct < self.max_soc_pct:
            raise ValueError("min_soc_pct must be below max_soc_pct")
        if not self.min_soc_pct <= self.soc_pct <= self.max_soc_pct:
            raise ValueError("soc_pct must lie within [min_soc_pct, max_soc_pct]")
        if self.reserve_soc_pct is not None and not (
            self.min_soc_pct <= self.reserve_soc_pct <= self.max_soc_pct
        ):
            raise ValueError("reserve_soc_pct must lie within [min_soc_pct, max_soc_pct]")
        return self


class Company(Caps):
    id: Slug
    name: str | None = None
    pv: Pv | None = None
    battery: Battery | None = None


class SharingKeyName(StrEnum):
    PRO_RATA = "pro_rata"
    STATIC = "static"
    EQUAL = "equal"
    PRIORITY = "priority"


class Sharing(_Model):
    key: SharingKeyName = SharingKeyName.PRO_RATA
    interval_s: int = Field(default=900, gt=0)
    shares: dict[str, float] = Field(default_factory=dict, description="static key: fraction of the pool")
    order: list[str] = Field(default_factory=list, description="priority key: first served first")

    @model_validator(mode="after")
    def _key_fields(self) -> Self:
        if any(v < 0 for v in self.shares.values()):
            raise ValueError("shares must be >= 0")
        if sum(self.shares.values()) > 1 + 1e-9:
            raise ValueError(f"static shares sum to {sum(self.shares.values()):g}, more than 1")
        if self.key is SharingKeyName.STATIC and not self.shares:
            raise ValueError("the static key needs shares")
        if self.shares and self.key is not SharingKeyName.STATIC:
            raise ValueError(f"shares are used by the static key only, the key is {self.key.value}")
        if self.order and self.key is not SharingKeyName.PRIORITY:
            raise ValueError(f"order is used by the priority key only, the key is {self.key.value}")
        if 900 % self.interval_s and self.interval_s % 900:
            raise ValueError("interval_s must divide or be a multiple of 900 s (quarter-hour settlement)")
        return self


class Location(_Model):
    lat: float = Field(default=52.09, ge=-90, le=90)
    lon: float = Field(default=5.12, ge=-180, le=180)


class Control(_Model):
    """Control parameters. Defaults suit a park polled every second; see docs/control.md."""

    cycle_s: float = Field(default=1.0, gt=0, le=10, description="control cycle")
    margin_pct: float = Field(default=2.0, ge=0, le=20, description="safety margin below each cap, % of it")
    margin_min_kw: float = Field(default=3.0, ge=0, description="safety margin at least this many kW")
    stale_after_s: float = Field(default=5.0, gt=0, description="a grid reading older than this is unsafe")
    plan_every_s: float = Field(default=300.0, gt=0, description="how often the horizon plan is renewed")
    plan_step_s: float = Field(default=300.0, ge=60, description="resolution of the horizon plan")
    horizon_h: float = Field(default=24.0, ge=1, le=72, description="plan horizon")
    default_reserve_soc_pct: Pct = Field(
        default=0.0,
        description="kept in each battery while the load of the coming 12 h is mostly unknown (no history "
        "for their day type); clamped to the battery's SoC window, so 0 keeps nothing beyond the ramp hours",
    )
    ramp_windows: list[Hours] = Field(
        default_factory=lambda: [Hours(start="05:00", end="09:00"), Hours(start="16:00", end="21:00")],
        description="local hours in which parks typically ramp up (offices, workshops, logistics halls "
        "starting; fleets returning): while the controller has seen no day of any type at such an hour, "
        "the batteries keep all the energy an import cap may need then (docs/control.md)",
    )
    holidays_country: str | None = Field(
        default="NL",
        description="public holidays (the `holidays` package's country code) that count as their own day "
        "type; null: none",
    )
    holidays_subdivision: str | None = Field(
        default=None, description="a province or state, where it matters"
    )
    closed_dates: list[dt.date] = Field(
        default_factory=list, description="the park's own closed days: counted as public holidays"
    )
    history_half_life_days: float = Field(
        default=21.0, gt=0, le=365, description="a day's weight in the load profiles halves over this age"
    )
    history_max_days: int = Field(
        default=400, ge=7, le=800, description="days of load history kept (in the state directory)"
    )

    @field_validator("holidays_country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is not None:
            import holidays  # noqa: PLC0415 - only where a config names a country

            if value not in holidays.list_supported_countries():
                raise ValueError(f"{value!r} is not a country the holidays package knows (e.g. NL, BE, DE)")
        return value

    @model_validator(mode="after")
    def _known_subdivision(self) -> Self:
        if self.holidays_subdivision is not None:
            import holidays  # noqa: PLC0415

            subdivs = holidays.list_supported_countries().get(self.holidays_country or "", [])
            if self.holidays_subdivision not in subdivs:
                raise ValueError(
                    f"holidays_subdivision {self.holidays_subdivision!r} is not one of "
                    f"{self.holidays_country}'s: {', '.join(subdivs) or 'none'}"
                )
        return self

    deadband_kw: float = Field(default=2.0, ge=0, description="park imbalance the batteries leave alone")
    pv_clear_sky_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1.2,
        description="prior PV output / (peak x sin(solar elevation)) on a clear day",
    )


class Site(_Model):
    id: Slug = "park"
    name: str | None = None
    timezone: str = "Europe/Amsterdam"
    location: Location = Field(default_factory=Location)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Service(_Model):
    """The gateway service (`hubctl run`): see docs/failsafe.md and deploy/README.md.

    Secrets never sit here: the broker credentials come from the environment
    (`HUBCTL_MQTT_USERNAME`, `HUBCTL_MQTT_PASSWORD`, set by the unit's EnvironmentFile).
    """

    mqtt_url: str | None = Field(
        default=None, description="mqtt://HOST[:PORT]; --mqtt-url or $HUBCTL_MQTT_URL override it"
    )
    influx_url: str | None = Field(
        default=None,
        description="--influx-url or $HUBCTL_INFLUX_URL override it; needs a state directory (the spool), "
        "else hubctl run refuses to start (exit 78)",
    )
    state_dir: str | None = Field(
        default=None, description="where the service keeps its state; default $STATE_DIRECTORY"
    )
    revert_s: float = Field(
        default=60.0,
        ge=10,
        le=3600,
        description="revert timer written with every setpoint: a device whose controller died falls back "
        "after this long, to the fallback hubctl configured where the device has a register for it "
        "(docs/failsafe.md), else to its own",
    )
    fail_after: int = Field(default=3, ge=1, description="failed polls in a row: a device is down")
    recover_after: int = Field(default=2, ge=1, description="good polls in a row: a device is up again")
    ready_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="READY is sent after the first cycle with every grid meter fresh, or after this long "
        "in fail-safe (the service then holds the fail-safe rather than restart)",
    )


class InfluxTarget(_Model):
    """Where the spool forwards to: any server of the InfluxDB v2 write API (docs/influxdb.md)."""

    url: str | None = Field(
        default=None,
        description="http://HOST:8086 (InfluxDB) or :8428 (VictoriaMetrics); default service.influx_url; "
        "needs a state directory (the spool is sent from there), else hubctl run refuses to start (exit 78)",
    )
    bucket: str = Field(default="hubctl", min_length=1, description="InfluxDB 1.8: database/retention-policy")
    org: str = Field(default="-", description="InfluxDB 2.x organisation; '-' for 1.8 and VictoriaMetrics")
    token_env: str = Field(
        default="HUBCTL_INFLUX_TOKEN",
        description="environment variable holding the token (1.8: user:password)",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    batch_points: int = Field(default=5000, ge=1, le=100_000)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)


class Storage(_Model):
    """The local spool and ledger (hubctl.data.spool, hubctl.data.ledger); without `influx` the spool
    is the store."""

    dir: str | None = Field(
        default=None,
        description="default: service.state_dir, else $STATE_DIRECTORY (hubctl export and report also look "
        "in /var/lib/hubctl)",
    )
    influx: InfluxTarget | None = None
    spool_max_mb: float = Field(default=512.0, gt=0, description="stored (compressed) size of the spool")
    spool_max_points: int | None = Field(default=None, gt=0)
    spool_max_age_days: float | None = Field(default=30.0, gt=0, description="older points are dropped")
    drop_policy: str = Field(
        default="oldest", pattern="^(oldest|newest)$", description="when full: drop the oldest or refuse new"
    )


class Report(_Model):
    """Internal settlement prices and report factors (docs/reports.md)."""

    shared_in_ct_per_kwh: float = Field(
        default=12.0, ge=0, description="a consumer pays per shared kWh received"
    )
    shared_out_ct_per_kwh: float = Field(
        default=10.0, ge=0, description="a producer is paid per shared kWh given"
    )
    co2_kg_per_kwh: float = Field(default=0.374, ge=0, description="grid emission factor (NL ~0.374)")


class MqttApi(_Model):
    """The site's MQTT broker: the operator API (`hubctl.service.operator_api`, docs/mqtt.md), the
    MQTT devices and `hubctl read` all use it (`hubctl.config.resolve.mqtt_broker`). Secrets come
    from the environment."""

    url: str | None = Field(
        default=None,
        description="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS); default service.mqtt_url; "
        "--mqtt-url or $HUBCTL_MQTT_URL override it",
    )
    username_env: str = Field(default="HUBCTL_MQTT_USERNAME", description="environment variable: user name")
    password_env: str = Field(default="HUBCTL_MQTT_PASSWORD", description="environment variable: password")
    ca_file: str | None = Field(default=None, description="CA certificate (PEM); enables TLS")
    cert_file: str | None = Field(default=None, description="client certificate (PEM), optional")
    key_file: str | None = Field(default=None, description="client key (PEM), with cert_file")
    topic_prefix: str = Field(default="hubctl", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    discovery_prefix: str | None = Field(
        default="homeassistant", description="Home Assistant MQTT discovery; null: none"
    )

    @model_validator(mode="after")
    def _key_with_cert(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


_LISTEN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) as (host, port); ValueError naming what is wrong."""
    m = _LISTEN.match(text)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port 1-65535)")
    return m.group(1).strip("[]"), int(m.group(2))


class Web(_Model):
    """The park page (`hubctl.web`, docs/web.md): served by `hubctl run` on one listener with `/metrics`.

    Access is by token: the park manager's from `$HUBCTL_WEB_MANAGER_TOKEN`, a company's from
    `$HUBCTL_WEB_COMPANY_<ID>_TOKEN` (the unit's EnvironmentFile), or their SHA-256 here instead,
    so that the config never holds a token. No manager token at all: refused at start (exit 78).
    """

    listen: str = Field(
        default="127.0.0.1:8765",
        description="HOST:PORT of the page and /metrics; loopback by default (put a TLS proxy in front "
        "for anything else); --web HOST:PORT overrides it",
    )
    manager_token_sha256: str | None = Field(
        default=None,
        description="SHA-256 (hex) of the park manager's token; else $HUBCTL_WEB_MANAGER_TOKEN",
    )
    company_token_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="company id: SHA-256 (hex) of its token; else $HUBCTL_WEB_COMPANY_<ID>_TOKEN",
    )

    @field_validator("listen")
    @classmethod
    def _is_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("manager_token_sha256")
    @classmethod
    def _is_hash(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("not a SHA-256 in hex (64 characters 0-9a-f): `printf %s TOKEN | sha256sum`")
        return value

    @field_validator("company_token_sha256")
    @classmethod
    def _are_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, v in value.items() if not _SHA256.match(v))
        if bad:
            raise ValueError(f"{', '.join(bad)}: not a SHA-256 in hex (64 characters 0-9a-f)")
        return value


class SiteConfig(_Model):
    """The whole site: `hubctl check-config` validates a YAML file against this model."""

    site: Site = Field(default_factory=Site)
    park: Park
    companies: list[Company] = Field(min_length=1)
    sharing: Sharing = Field(default_factory=Sharing)
    control: Control = Field(default_factory=Control)
    devices: list[Device] = Field(default_factory=list, description="empty in simulation")
    service: Service = Field(default_factory=Service)
    storage: Storage = Field(default_factory=Storage)
    report: Report = Field(default_factory=Report)
    mqtt: MqttApi | None = None
    web: Web | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        ids = [c.id for c in self.companies]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"company ids must be unique: {', '.join(dup)}")
        dev_ids = [d.id for d in self.devices]
        dup = sorted({i for i in dev_ids if dev_ids.count(i) > 1})
        if dup:
            raise ValueError(f"device ids must be unique: {', '.join(dup)}")
        strays = sorted({d.company for d in self.devices if d.company is not None and d.company not in ids})
        if strays:
            raise ValueError(f"devices name unknown companies: {', '.join(strays)}")
        unknown = sorted(set(self.sharing.shares) - set(ids)) + sorted(set(self.sharing.order) - set(ids))
        if unknown:
            raise ValueError(f"sharing names unknown companies: {', '.join(unknown)}")
        strays = sorted(set(self.web.company_token_sha256) - set(ids)) if self.web is not None else []
        if strays:
            raise ValueError(f"web.company_token_sha256 names unknown companies: {', '.join(strays)}")
        self._check_connection()
        return self

    def _check_connection(self) -> None:
        """The park's connection against its meters (deploy/README.md, "Park connections")."""
        meters = [d.id for d in self.devices if d.role is DeviceRole.PARK_METER]
        if len(meters) > 1:
            raise ValueError(
                f"more than one park_meter ({', '.join(meters)}): one hubctl holds the caps of one "
                "connection; a park with several connections runs one hubctl per connection, each with "
                "its own config (deploy/README.md)"
            )
        connection = self.park.connection
        if connection is Connection.GROUP and meters:
            raise ValueError(
                f"park.connection: group has no park meter, the caps are on the companies' meters "
                f"summed; remove {meters[0]} or set park.connection: shared"
            )
        if connection is Connection.SHARED and self.devices and not meters:
            raise ValueError(
                "park.connection: shared needs the connection's meter: a device with role park_meter"
            )
        if self.park.meter_tolerance_kw is not None and self.connection is not Connection.SHARED:
            raise ValueError(
                "park.meter_tolerance_kw is for a shared connection's park meter; this park is on a group "
                "contract (no park meter), so it would do nothing"
            )

    def connection_summary(self) -> str:
        """Where the park caps are held, in one line (`hubctl check-config`, the service's start)."""
        if self.connection is Connection.SHARED:
            meter = next((d.id for d in self.devices if d.role is DeviceRole.PARK_METER), None)
            where = f"park meter {meter}" if meter else "the park meter"
            return (
                f"shared connection: the park caps are held on {where}, "
                f"disagreement tolerance {self.park.meter_tolerance():g} kW"
            )
        return f"group contract: the park caps are held on the sum of {len(self.companies)} companies' meters"

    @property
    def connection(self) -> Connection:
        """The park's connection: as configured, else shared when a park meter is configured."""
        if self.park.connection is not None:
            return self.park.connection
        has_meter = any(d.role is DeviceRole.PARK_METER for d in self.devices)
        return Connection.SHARED if has_meter else Connection.GROUP

    def pv_rated_kw(self) -> dict[str, float]:
        """Each PV device's rating: its company's PV peak shared evenly over the company's PV devices.

        A map that expresses its limit in % needs the rating to convert kW;
        several inverters of one company are taken as equal (the setpoint
        writer splits the company's limit evenly over them, too).
        """
        peak = {c.id: c.pv.peak_kw for c in self.companies if c.pv is not None}
        pv = [d for d in self.devices if d.role is DeviceRole.PV and d.company in peak]
        count = {cid: sum(d.company == cid for d in pv) for cid in peak}
        return {d.id: peak[d.company] / count[d.company] for d in pv if d.company is not None}

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.site.timezone)


def report_problems(source: str, problems: list[str]) -> int:
    """Print a configuration's problems to stderr, one per line with its path; returns 78 (EX_CONFIG)."""
    print(f"{source}: {len(problems)} problem(s)", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return ConfigError.exit_code


def parse_config(data: Any, source: str = "<config>") -> SiteConfig:
    """Validate plain data (from YAML) into a SiteConfig, or raise ConfigError listing every problem."""
    return parse_model(SiteConfig, data, source, ConfigError, expected="park, companies, ...")


def load_config(path: Path) -> SiteConfig:
    """Read and validate a site config YAML file."""
    return parse_config(load_yaml(path, ConfigError), str(path))
