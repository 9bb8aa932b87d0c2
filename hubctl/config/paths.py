"""Where hubctl keeps its durable state: one rule for the service and the commands that read it.

`storage.dir`, else `service.state_dir`, else `$STATE_DIRECTORY` (systemd's
`StateDirectory=`; it may list several directories separated by `:`, the first is
used). None: no state directory, so nothing survives a restart. The gateway
(`hubctl run`) keeps the spool, the ledger, the operator settings and the load
history there; `hubctl history` reads and writes the same directory, so that an
import lands where the service looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hubctl.config.site import SiteConfig

SOURCES = "storage.dir, service.state_dir or $STATE_DIRECTORY"


def resolve_state_dir(cfg: SiteConfig, env: Mapping[str, str]) -> Path | None:
    """The state directory of `cfg` (module docstring), None when none is set."""
    for candidate in (cfg.storage.dir, cfg.service.state_dir, env.get("STATE_DIRECTORY")):
        if candidate:
            return Path(candidate.split(":")[0])
    return None
