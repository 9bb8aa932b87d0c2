"""What `hubctl run` refuses to start with, in one place: `hubctl check-config` runs the same checks.

What it is: `start_problems(cfg, options)`, every problem of a site config that would make
`hubctl run` exit 78, one line each naming the setting (issue #13: a config that passes
`check-config` must not fail at start, and `check-config` must reject all that `run` rejects):

- the settings that are set but could not take effect (`hubctl.config.resolve.gateway_problems`:
  an InfluxDB URL without a state directory, MQTT devices without a broker, ...);
- the broker: a URL that is not an MQTT broker's (`http://...`), TLS files that are missing,
  unreadable or not PEM (`broker_problems`);
- the devices: every entry built as the gateway builds it (an unknown driver, a map that cannot be
  loaded, a role the map does not offer), without connecting to anything (`device_problems`);
- the park page (`hubctl.config.resolve.web_problems`): no park-manager token, a token both in the
  environment and hashed in the config, one shorter than 16 characters, two roles with one token,
  a company's token variable naming no company, a token set while the page is off;
- the state directory: one that is a file, or cannot be created or written (`state_dir_problems`).

`hubctl run` creates the state directory (`create=True`); `hubctl check-config` only looks
(`create=False`: the directory, or the nearest existing parent it would be made in, must be a
writable directory). Both judge the environment they are given (`Options.env`): the unit's
EnvironmentFile supplies the broker URL and the secrets, so `hubctl check-config --env-file`
reads that file (hubctl.cli.main).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING

from hubctl.config.resolve import (
    gateway_problems,
    mqtt_broker,
    resolve_state_dir,
    state_dir_source,
    web_problems,
)
from hubctl.errors import DeviceConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from hubctl.config.site import SiteConfig
    from hubctl.service.options import Options

__all__ = ["broker_problems", "device_problems", "start_problems", "state_dir_problems"]


def broker_problems(cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str]) -> list[str]:
    """The broker's URL when it is not an MQTT broker's, and its TLS files that cannot be used
    (missing, unreadable, not PEM), one line each naming the setting; empty without a broker.
    Without them every connection would fail."""
    from hubctl.transport.mqtt import parse_url, tls_file_problems  # noqa: PLC0415 - only with a broker

    broker = mqtt_broker(cfg, cli_url, env)
    if broker is None:
        return []
    problems = []
    try:
        parse_url(broker.url)
    except ValueError as exc:
        problems.append(f"{broker.source}: {exc}")
    problems += [
        f"mqtt.{field}: {reason}"
        for field, reason in tls_file_problems(broker.ca_file, broker.cert_file, broker.key_file)
    ]
    return problems


def device_problems(cfg: SiteConfig, cli_url: str | None, env: Mapping[str, str]) -> list[str]:
    """Every device entry the gateway could not build, `devices.<id>: why` (nothing is connected)."""
    from hubctl.devices import build_device  # noqa: PLC0415 - the drivers only where there are devices
    from hubctl.devices.mqtt import MqttHub  # noqa: PLC0415
    from hubctl.transport.modbus import ConnectionPool  # noqa: PLC0415

    if not cfg.devices:
        return []
    broker = mqtt_broker(cfg, cli_url, env)
    hub = None
    if broker is not None and any(d.driver == "mqtt" for d in cfg.devices):
        with contextlib.suppress(ValueError):  # a URL that is not a broker's: named by broker_problems
            hub = MqttHub.from_broker(broker, identifier=f"hubctl-{cfg.site.id}")
    rated = cfg.pv_rated_kw()
    pool = ConnectionPool()  # connections are made on first use: none here
    problems = []
    for config in cfg.devices:
        if config.driver == "mqtt" and hub is None:
            continue  # no broker: named by gateway_problems or broker_problems
        try:
            build_device(
                config, pool=pool, mqtt=hub, rated_kw=rated.get(config.id), revert_s=cfg.service.revert_s
            )
        except DeviceConfigError as exc:
            problems.append(f"devices.{config.id}: {exc}")
    return problems


def _writable_dir(directory: Path, *, create: bool) -> str | None:
    """Why `directory` cannot be the state directory (None: it can)."""
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            return f"{directory} is not writable ({exc.strerror})"
        return None
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == directory else f"cannot be made: {existing} is a file"
        return f"{directory} {what}, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == directory else f"cannot be made: {existing} is not writable"
        return f"{directory} {what} (by this user)"
    return None


def state_dir_problems(cfg: SiteConfig, env: Mapping[str, str], *, create: bool) -> list[str]:
    """The state directory when it cannot be used (a file, not writable); empty without one."""
    directory = resolve_state_dir(cfg, env)
    if directory is None:
        return []
    if directory.exists() and not directory.is_dir():
        return [f"{state_dir_source(cfg, env)}: {directory} is a file, not a directory"]
    reason = _writable_dir(directory, create=create)
    return [] if reason is None else [f"{state_dir_source(cfg, env)}: {reason}"]


def start_problems(cfg: SiteConfig, options: Options, *, create: bool) -> list[str]:
    """Every reason `hubctl run` would refuse to start (exit 78), one line each naming the setting."""
    env = options.env
    problems = gateway_problems(cfg, options.mqtt_url, options.influx_url, env)
    problems += web_problems(cfg, options.web, env)
    problems += broker_problems(cfg, options.mqtt_url, env)
    problems += device_problems(cfg, options.mqtt_url, env)
    if not problems or not create:  # `run` makes the directory only for a config that can run
        problems += state_dir_problems(cfg, env, create=create)
    return problems
