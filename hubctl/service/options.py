"""What `hubctl run` is started with besides the site config: `Options`.

The command-line flags (`--mqtt-url`, `--influx-url`, `--web HOST:PORT` (the park page), the
hidden `--speed`, `--start-utc` and `--trace`) and the environment the service reads its settings
and secrets from
(`hubctl.config.resolve` decides what each of them overrides, and `gateway_problems` there lists
the ones that are set but could not take effect: `hubctl run` refuses to start on any, exit 78).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True, slots=True)
class Options:
    mqtt_url: str | None = None
    influx_url: str | None = None
    web: str | None = None  # --web HOST:PORT: the park page (hubctl.web) even without a web: section
    speed: float = 1.0
    start_utc: float | None = None
    trace: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
