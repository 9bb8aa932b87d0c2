"""What the operator MQTT API publishes and records, built from plain data (docs/mqtt.md).

What it is: the state document of one control cycle (`state_document`) and its per-company and
per-device parts (`section_messages`), the audit record of a command (`AuditRecord`,
`audit_record`), the Home Assistant discovery payloads (`discovery_node`, `discovery_sensors`,
`discovery_messages`, `discovery_topics`), which retained topics are stale (`known_ids`,
`retained_is_stale`) and the crash-safe write of the state file (`write_atomic`). Everything
here but `write_atomic` is a pure function of plain data; the MQTT shell around it (connection,
commands in, replies and state out) is `hubctl.service.operator_api`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from hubctl.config.site import SiteConfig
    from hubctl.core.commands import Reply
    from hubctl.core.types import CompanyReading, Decision
    from hubctl.service.cycle import MeterVerdict

__all__ = [
    "AUDIT_PAYLOAD_CHARS",
    "AuditRecord",
    "audit_record",
    "compact_json",
    "discovery_messages",
    "discovery_node",
    "discovery_sensors",
    "discovery_topics",
    "known_ids",
    "retained_is_stale",
    "section_messages",
    "state_document",
    "write_atomic",
]

AUDIT_PAYLOAD_CHARS: Final = 512

# (object id, name, state topic, value template, device class) of one Home Assistant sensor
Sensor = tuple[str, str, str, str, str | None]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One command as received and answered (for the journal and the time-series store)."""

    ts_utc: float
    topic: str
    key: str
    client_id: str | None  # from the MQTT v5 user property "client_id", when the sender set one
    payload: str  # as received, decoded leniently and cut to 512 characters
    ok: bool
    error: str | None
    value: Any  # as applied
    command_id: str | None


def audit_record(
    now: float, topic: str, key: str, payload: bytes, reply: Reply, client_id: str | None
) -> AuditRecord:
    """The record of one command and its reply."""
    text = payload.decode("utf-8", errors="replace")[:AUDIT_PAYLOAD_CHARS]
    return AuditRecord(now, topic, key, client_id, text, reply.ok, reply.error, reply.value, reply.id)


def state_document(
    cfg: SiteConfig,
    ts_utc: float,
    decision: Decision,
    readings: Sequence[CompanyReading],
    devices: Mapping[str, Mapping[str, Any]] | None = None,
    meter: MeterVerdict | None = None,
) -> dict[str, Any]:
    """The state a service publishes, from one control cycle (a pure helper for the `state_source`).

    Units in names, + import / + discharge, None where not available.
    """

    def lim(li: Any) -> dict[str, Any]:
        return {
            "import_limit_kw": li.import_kw,
            "import_source": li.import_source,
            "export_limit_kw": li.export_kw,
            "export_source": li.export_source,
        }

    grid = [r.grid_kw for r in readings]
    park_kw = None if any(g is None for g in grid) else sum(g for g in grid if g is not None)
    park: dict[str, Any] = {"power_kw": park_kw, "limits": lim(decision.park_limits)}
    if meter is not None:  # a shared connection: the park meter is the park's power
        park["power_kw"] = meter.park_kw
        park["meter"] = {
            "device": meter.device,
            "companies_kw": meter.companies_kw,
            "common_kw": meter.common_kw,
            "tolerance_kw": meter.tolerance_kw,
            "disagree": meter.disagree,
        }
    companies: dict[str, Any] = {}
    for i, (c, r) in enumerate(zip(cfg.companies, readings, strict=True)):
        own = decision.company_limits.get(c.id)
        companies[c.id] = {
            "power_kw": r.grid_kw,
            "pv_kw": r.pv_kw,
            "battery_kw": r.battery_kw,
            "soc_pct": r.soc_pct,
            "grid_age_s": r.grid_age_s,
            "power_from_park_meter": r.grid_from_park_meter,
            "battery_setpoint_kw": decision.battery_setpoint_kw[i],
            "pv_limit_kw": decision.pv_limit_kw[i],
            "limits": lim(own) if own is not None else None,
        }
    return {
        "ts": ts_utc,
        "site": cfg.site.id,
        "mode": decision.mode,
        "reason": decision.reason,
        "park": park,
        "companies": companies,
        "devices": {k: dict(v) for k, v in (devices or {}).items()},
    }


def compact_json(obj: Any) -> bytes:
    """A published state body: compact JSON, no NaN, anything else as its str()."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()


def section_messages(
    doc: Mapping[str, Any], base: str, known: Mapping[str, set[str]]
) -> Iterator[tuple[str, bytes]]:
    """(topic, body) of `<base>/company/<id>` and `<base>/device/<id>` for the ids in the config."""
    for kind, name in (("company", "companies"), ("device", "devices")):
        section = doc.get(name) or {}
        for item_id, item in section.items():
            if item_id in known[kind]:
                yield f"{base}/{kind}/{item_id}", compact_json(item)


def known_ids(cfg: SiteConfig) -> dict[str, set[str]]:
    """The company and device ids of the config, by the topic part they are published under."""
    return {
        "company": {c.id for c in cfg.companies},
        "device": {d.id for d in cfg.devices},
    }


def retained_is_stale(
    cfg: SiteConfig, base: str, discovery_prefix: str | None, known: Mapping[str, set[str]], topic: str
) -> bool:
    """Whether a retained `topic` is of an id that left the config (or a discovery entry no longer made)."""
    parts = topic.removeprefix(base + "/").split("/")
    if len(parts) == 2 and parts[0] in known:
        return parts[1] not in known[parts[0]]
    if discovery_prefix is not None and topic.startswith(discovery_prefix + "/"):
        return topic not in discovery_topics(cfg, base, discovery_prefix)
    return False


def write_atomic(path: Path, text: str) -> None:
    """Write `text` so that `path` holds either the old or the new content, even after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- Home Assistant discovery ----------------------------------------------------------------------------


def discovery_node(cfg: SiteConfig) -> str:
    """The Home Assistant node id of a site: `hubctl_<site id>` with `-` as `_`."""
    return f"hubctl_{cfg.site.id.replace('-', '_')}"


def discovery_sensors(cfg: SiteConfig, base: str) -> list[Sensor]:
    """(object id, name, state topic, value template, device class) per sensor."""
    state = f"{base}/state"
    out: list[Sensor] = [
        ("park_power_kw", "Park power", state, "{{ value_json.park.power_kw }}", "power"),
        (
            "park_import_limit_kw",
            "Park import limit",
            state,
            "{{ value_json.park.limits.import_limit_kw }}",
            "power",
        ),
    ]
    for c in cfg.companies:
        slug = c.id.replace("-", "_")
        topic = f"{base}/company/{c.id}"
        label = c.name or c.id
        out.append((f"{slug}_power_kw", f"{label} power", topic, "{{ value_json.power_kw }}", "power"))
        if c.pv is not None:
            out.append((f"{slug}_pv_kw", f"{label} PV", topic, "{{ value_json.pv_kw }}", "power"))
        if c.battery is not None:
            out.append(
                (f"{slug}_battery_kw", f"{label} battery", topic, "{{ value_json.battery_kw }}", "power")
            )
            out.append((f"{slug}_soc_pct", f"{label} SoC", topic, "{{ value_json.soc_pct }}", "battery"))
    return out


def discovery_topics(cfg: SiteConfig, base: str, prefix: str) -> set[str]:
    """The discovery config topics the site's sensors have (others under the node are stale)."""
    node = discovery_node(cfg)
    return {f"{prefix}/sensor/{node}/{oid}/config" for oid, *_ in discovery_sensors(cfg, base)}


def discovery_messages(cfg: SiteConfig, base: str, prefix: str) -> list[tuple[str, bytes]]:
    """(topic, body) of every sensor's discovery config, published retained after each connect."""
    node = discovery_node(cfg)
    device = {
        "identifiers": [node],
        "name": cfg.site.name or f"hubctl {cfg.site.id}",
        "manufacturer": "hubctl",
    }
    out: list[tuple[str, bytes]] = []
    for oid, name, topic, template, dev_class in discovery_sensors(cfg, base):
        config = {
            "name": name,
            "unique_id": f"{node}_{oid}",
            "state_topic": topic,
            "value_template": template,
            "unit_of_measurement": "%" if dev_class == "battery" else "kW",
            "device_class": dev_class,
            "state_class": "measurement",
            "availability_topic": f"{base}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        body = json.dumps(config, separators=(",", ":")).encode()
        out.append((f"{prefix}/sensor/{node}/{oid}/config", body))
    return out
