"""Which broker, which InfluxDB target and which state directory each part of hubctl uses.

What it is: every resolution of a setting from the site config, a command-line flag and the
environment. The MQTT broker has one (`mqtt_broker`), used by the operator API, the MQTT device
hub and `hubctl read` alike (issue #12): the URL in the order docs/mqtt.md gives, the TLS files
of the `mqtt:` section, the credentials from the variables it names. Turning a broker URL into
host, port and TLS is not done here (`hubctl.transport.mqtt`): this module only chooses.

The state directory: `storage.dir`, else `service.state_dir`, else `$STATE_DIRECTORY` (systemd's
`StateDirectory=`; it may list several directories separated by `:`, the first is used). None: no
state directory, so nothing survives a restart. The gateway (`hubctl run`) keeps the spool, the
ledger, the operator settings and the load history there; `hubctl history` reads and writes the
same directory, so that an import lands where the service looks. `hubctl export` and `hubctl
report` fall back to /var/lib/hubctl instead.

No silent no-ops (`gateway_problems`): a setting of `hubctl run` that is set but could not take
effect is refused at start (exit 78, naming it and what to set), never a warning and a service
that quietly does less. An InfluxDB URL without a state directory is one: the forwarder sends
the spool, and the spool lives in the state directory, so hubctl does not invent one (a default
such as /var/lib/hubctl would be unwritable off a gateway, or shared by two services).

The park page (`web_settings`, `web_problems`): on when the config has a `web:` section or
`hubctl run --web HOST:PORT` is given (the flag wins over `web.listen`); each role's token comes
from the environment or as a SHA-256 from the config, never both; only the digests leave here.

May import: `hubctl.errors` and the config models (a package that sits just above the errors).
Pure: the environment comes in as a mapping, nothing is read from the process here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from hubctl.config.site import InfluxTarget, Web, parse_listen

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hubctl.config.site import SiteConfig

__all__ = [
    "DEFAULT_READ_MQTT_URL",
    "REPORT_STATE_DIR",
    "SOURCES",
    "BrokerSettings",
    "InfluxSettings",
    "WebSettings",
    "gateway_problems",
    "influx_settings",
    "mqtt_broker",
    "report_state_dir",
    "resolve_state_dir",
    "state_dir_source",
    "web_company_env",
    "web_problems",
    "web_settings",
]

SOURCES = "storage.dir, service.state_dir or $STATE_DIRECTORY"
DEFAULT_READ_MQTT_URL = "mqtt://127.0.0.1:1883"
REPORT_STATE_DIR = Path("/var/lib/hubctl")


# --- the state directory -----------------------------------------------------------------------------------


def resolve_state_dir(cfg: SiteConfig, env: Mapping[str, str]) -> Path | None:
    """The state directory of the gateway and `hubctl history` (module docstring); None when none is set."""
    for candidate in (cfg.storage.dir, cfg.service.state_dir, env.get("STATE_DIRECTORY")):
        if candidate:
            return Path(candidate.split(":")[0])
    return None


def state_dir_source(cfg: SiteConfig, env: Mapping[str, str]) -> str | None:
    """The name of the setting `resolve_state_dir` takes the directory from; None when none is set."""
    for name, candidate in (
        ("storage.dir", cfg.storage.dir),
        ("service.state_dir", cfg.service.state_dir),
        ("$STATE_DIRECTORY", env.get("STATE_DIRECTORY")),
    ):
        if candidate:
            return name
    return None


def report_state_dir(cfg: SiteConfig, env: Mapping[str, str]) -> Path:
    """Where `hubctl export` and `hubctl report` look for the spool and the ledger.

    Differs from the gateway's `resolve_state_dir`: with none of its three sources set, these
    commands look in /var/lib/hubctl, where the gateway keeps nothing (it runs without storage).
    """
    return resolve_state_dir(cfg, env) or REPORT_STATE_DIR


# --- MQTT brokers ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The one broker configuration of the operator API, the MQTT device hub and `hubctl read`."""

    url: str
    source: str  # the setting the URL came from: --mqtt-url, $HUBCTL_MQTT_URL, mqtt.url, ...
    ca_file: str | None = None  # mqtt.ca_file: TLS (also with an mqtts:// or ssl:// URL)
    cert_file: str | None = None  # mqtt.cert_file + mqtt.key_file: a client certificate
    key_file: str | None = None
    username: str | None = None  # from the variable mqtt.username_env names (an empty value: none)
    password: str | None = None  # from the variable mqtt.password_env names


@overload
def mqtt_broker(
    cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str], default_url: str
) -> BrokerSettings: ...
@overload
def mqtt_broker(
    cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str], default_url: None = None
) -> BrokerSettings | None: ...
def mqtt_broker(
    cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str], default_url: str | None = None
) -> BrokerSettings | None:
    """The broker of every MQTT user of hubctl (docs/mqtt.md): the URL from `--mqtt-url`,
    `$HUBCTL_MQTT_URL`, `mqtt.url`, `service.mqtt_url`, in that order, else `default_url` (`hubctl
    read`: mqtt://127.0.0.1:1883; the gateway: none, so None); TLS files from the `mqtt:` section;
    user name and password from the variables `mqtt.username_env` and `mqtt.password_env` name
    (`HUBCTL_MQTT_USERNAME`, `HUBCTL_MQTT_PASSWORD` without the section).

    Whether the files exist is checked where they are used (`hubctl.transport.mqtt`): this is pure.
    """
    mq = cfg.mqtt
    source, url = next(
        (
            (name, value)
            for name, value in (
                ("--mqtt-url", cli_url),
                ("$HUBCTL_MQTT_URL", env.get("HUBCTL_MQTT_URL")),
                ("mqtt.url", mq.url if mq is not None else None),
                ("service.mqtt_url", cfg.service.mqtt_url),
                ("default", default_url),
            )
            if value
        ),
        ("", None),
    )
    if url is None:
        return None
    if mq is None:
        user, password = env.get("HUBCTL_MQTT_USERNAME"), env.get("HUBCTL_MQTT_PASSWORD")
        return BrokerSettings(url, source, username=user or None, password=password or None)
    return BrokerSettings(
        url,
        source,
        ca_file=mq.ca_file,
        cert_file=mq.cert_file,
        key_file=mq.key_file,
        username=env.get(mq.username_env) or None,
        password=env.get(mq.password_env) or None,
    )


# --- InfluxDB ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """Where the gateway's forwarder writes the spool to."""

    url: str
    target: InfluxTarget  # the `storage.influx` section, or its defaults when there is none
    token: str  # from the variable `target.token_env` names; "" when it is not set


def influx_settings(cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str]) -> InfluxSettings | None:
    """The gateway's InfluxDB target: the URL from `--influx-url`, `$HUBCTL_INFLUX_URL`,
    `storage.influx.url`, `service.influx_url` (None: no forwarding); bucket, org, timeout and
    batching from `storage.influx` (or that section's defaults); the token from the environment.

    The only InfluxDB resolution in hubctl (the commands read the spool, never InfluxDB).
    """
    section = cfg.storage.influx
    url = (
        cli_url
        or env.get("HUBCTL_INFLUX_URL")
        or (section.url if section is not None else None)
        or cfg.service.influx_url
    )
    if not url:
        return None
    target = section if section is not None else InfluxTarget()
    return InfluxSettings(url, target, env.get(target.token_env, ""))


def _influx_url_source(cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str]) -> str | None:
    """Where `influx_settings` takes its URL from (the name an operator sets), None: nowhere."""
    section = cfg.storage.influx
    for name, value in (
        ("--influx-url", cli_url),
        ("$HUBCTL_INFLUX_URL", env.get("HUBCTL_INFLUX_URL")),
        ("storage.influx.url", section.url if section is not None else None),
        ("service.influx_url", cfg.service.influx_url),
    ):
        if value:
            return name
    return None


_NEEDS_DIR = "set storage.dir, service.state_dir or $STATE_DIRECTORY (systemd's StateDirectory=)"
_SPOOL_FIELDS = ("spool_max_mb", "spool_max_points", "spool_max_age_days", "drop_policy")


def gateway_problems(
    cfg: SiteConfig, cli_mqtt_url: str | None, cli_influx_url: str | None, env: Mapping[str, str]
) -> list[str]:
    """Every setting of `hubctl run` that is set but would not take effect, one line each naming it
    and what to set (empty: every setting works). `hubctl run` refuses to start on any (exit 78)."""
    problems: list[str] = []
    state_dir = resolve_state_dir(cfg, env)
    storage, service = cfg.storage, cfg.service
    # two places for one setting: the one that loses would be ignored
    if storage.dir and service.state_dir and Path(storage.dir) != Path(service.state_dir):
        problems.append(
            f"service.state_dir: {service.state_dir} is not used, storage.dir ({storage.dir}) is: set one"
        )
    section = storage.influx
    if section is not None and section.url and service.influx_url and section.url != service.influx_url:
        problems.append(
            f"service.influx_url: {service.influx_url} is not used, storage.influx.url ({section.url}) is: "
            "set one"
        )
    # InfluxDB: the forwarder sends the spool, which lives in the state directory
    source = _influx_url_source(cfg, cli_influx_url, env)
    if source is not None and state_dir is None:
        problems.append(
            f"{source}: InfluxDB is written from the spool in the state directory, and there is none: "
            f"{_NEEDS_DIR}"
        )
    if section is not None and source is None:
        problems.append(
            "storage.influx: no URL to forward to: set storage.influx.url (or service.influx_url, "
            "--influx-url, $HUBCTL_INFLUX_URL), or remove the section"
        )
    explicit_token = section is not None and "token_env" in section.model_fields_set
    if section is not None and source is not None and explicit_token and not env.get(section.token_env):
        problems.append(f"storage.influx.token_env: ${section.token_env} is not set")
    # the spool's bounds without a spool
    if state_dir is None:
        problems.extend(
            f"storage.{name}: there is no spool without a state directory: {_NEEDS_DIR}"
            for name in _SPOOL_FIELDS
            if name in storage.model_fields_set
        )
    # MQTT devices without a broker: nothing would ever read them
    mqtt_devices = [d.id for d in cfg.devices if d.driver == "mqtt"]
    if mqtt_devices and mqtt_broker(cfg, cli_mqtt_url, env) is None:
        problems.append(
            f"devices: {', '.join(mqtt_devices)} (driver mqtt) need a broker: set mqtt.url (or "
            "service.mqtt_url, --mqtt-url, $HUBCTL_MQTT_URL)"
        )
    # the operator API's section without a broker
    mq = cfg.mqtt
    if mq is not None:
        if mqtt_broker(cfg, cli_mqtt_url, env) is None:
            problems.append(
                "mqtt: no broker for the operator API: set mqtt.url (or service.mqtt_url, --mqtt-url, "
                "$HUBCTL_MQTT_URL), or remove the section"
            )
        else:
            problems.extend(
                f"mqtt.{name}: ${getattr(mq, name)} is not set"
                for name in ("username_env", "password_env")
                if name in mq.model_fields_set and not env.get(getattr(mq, name))
            )
    return problems


# --- the park page -----------------------------------------------------------------------------------------

WEB_MANAGER_ENV = "HUBCTL_WEB_MANAGER_TOKEN"
WEB_TOKEN_MIN_CHARS = 16
_WEB_COMPANY_ENV = re.compile(r"^HUBCTL_WEB_COMPANY_(.+)_TOKEN$")


def web_company_env(company_id: str) -> str:
    """`$HUBCTL_WEB_COMPANY_<ID>_TOKEN`: the id upper-cased, every other character than A-Z 0-9 as `_`."""
    return f"HUBCTL_WEB_COMPANY_{re.sub(r'[^A-Z0-9]', '_', company_id.upper())}_TOKEN"


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a token: what is kept and compared (docs/web.md, "Access")."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Where the park page listens and the digests of the tokens that open it (role -> SHA-256 hex)."""

    host: str
    port: int
    source: str  # "--web" or "web.listen"
    manager_digest: str | None
    company_digests: dict[str, str] = field(default_factory=dict)


def web_settings(cfg: SiteConfig, cli_listen: str | None, env: Mapping[str, str]) -> WebSettings | None:
    """The park page's settings; None: it is off (no `web:` section, no `--web`)."""
    if cfg.web is None and cli_listen is None:
        return None
    section = cfg.web or Web()
    host, port = parse_listen(cli_listen or section.listen)
    manager = section.manager_token_sha256
    if manager is None and env.get(WEB_MANAGER_ENV):
        manager = token_digest(env[WEB_MANAGER_ENV])
    companies: dict[str, str] = {}
    for c in cfg.companies:
        digest = section.company_token_sha256.get(c.id)
        token = env.get(web_company_env(c.id))
        if digest is None and token:
            digest = token_digest(token)
        if digest is not None:
            companies[c.id] = digest
    return WebSettings(host, port, "--web" if cli_listen else "web.listen", manager, companies)


def web_problems(cfg: SiteConfig, cli_listen: str | None, env: Mapping[str, str]) -> list[str]:
    """Every setting of the park page that is set but could not take effect (or is unsafe), one line each."""
    problems: list[str] = []
    company_vars = {web_company_env(c.id): c.id for c in cfg.companies}
    ids_by_var: dict[str, list[str]] = {}
    for c in cfg.companies:
        ids_by_var.setdefault(web_company_env(c.id), []).append(c.id)
    stray = sorted(
        k for k, v in env.items() if v and _WEB_COMPANY_ENV.match(k) is not None and k not in company_vars
    )
    settings = web_settings(cfg, cli_listen, env)
    if settings is None:
        problems.extend(
            f"${name}: set, but the park page is off: add a web: section (or --web HOST:PORT), or unset it"
            for name in [WEB_MANAGER_ENV, *company_vars]
            if env.get(name)
        )
        problems.extend(f"${name}: names no company of the site config" for name in stray)
        return problems
    section = cfg.web or Web()
    if section.manager_token_sha256 is not None and env.get(WEB_MANAGER_ENV):
        problems.append(f"web.manager_token_sha256: ${WEB_MANAGER_ENV} is set too: set one")
    if settings.manager_digest is None:
        problems.append(
            f"web: no park-manager token: set ${WEB_MANAGER_ENV} (the unit's EnvironmentFile) or "
            "web.manager_token_sha256"
        )
    for var, ids in ids_by_var.items():
        if len(ids) > 1:
            problems.append(f"web: companies {', '.join(ids)} share the token variable ${var}: rename one")
    for c in cfg.companies:
        var = web_company_env(c.id)
        if c.id in section.company_token_sha256 and env.get(var):
            problems.append(f"web.company_token_sha256.{c.id}: ${var} is set too: set one")
    for var in [WEB_MANAGER_ENV, *company_vars]:
        token = env.get(var)
        if token and len(token) < WEB_TOKEN_MIN_CHARS:
            problems.append(
                f"${var}: shorter than {WEB_TOKEN_MIN_CHARS} characters: use a random token "
                "(`openssl rand -hex 24`)"
            )
    problems.extend(f"${name}: names no company of the site config" for name in stray)
    roles = {"park manager": settings.manager_digest} | {
        f"company {k}": v for k, v in settings.company_digests.items()
    }
    seen: dict[str, str] = {}
    for role, digest in roles.items():
        if digest is None:
            continue
        if digest in seen:
            problems.append(f"web: {seen[digest]} and {role} have the same token: give each its own")
        else:
            seen[digest] = role
    return problems
