"""Points for InfluxDB, pure: the schema, line protocol both ways, and one builder per measurement.

What it is: the half of the time-series layer that does no I/O. The spool (``spool.py``) stores
the lines :func:`encode_line` writes, the writer (``influx.py``) sends them, and ``hubctl
export --format csv`` reads them back with :func:`parse_line`. Imports nothing of hubctl.

The schema is documented in docs/influxdb.md; every point is built by one of the ``*_point``
functions below, so names cannot drift from the document.

Decisions:

- **Names are snake_case** (checked), **fields are numeric only**: floats,
  plus booleans written as 0/1 floats. VictoriaMetrics stores a string field
  as 0, so anything textual (the source of a limit, a command's result) is a
  tag; tags hold low-cardinality values only (slugs, sources, kinds).
  VictoriaMetrics names a series ``<measurement>_<field>`` with the tags as
  labels.
- **Line protocol is written here**, not by ``influxdb_client.Point``: the
  spool stores the lines, so the encoder must be cheap and its output stable;
  :func:`parse_line` reads them back for ``hubctl export --format csv``.
- **An estimate says so in a 0/1 field beside it**, not in a tag: ``pv_available_kw`` of ``park``
  and ``company`` comes with ``pv_available_estimated`` (1: the controller's clear-sky estimate for
  an inverter held by its limit, 0: the inverters' readings), ``curtailed_kwh`` of ``quarter`` with
  ``curtailed_estimated``. A tag would be a label of every field of the point, so ``park_grid_kw``
  would change series each time a limit starts or ends.
- **Every line carries its timestamp in milliseconds** (the writer sends with
  that precision; a 1 s control cycle needs no more).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "SCHEMA",
    "Point",
    "allocation_point",
    "command_point",
    "company_point",
    "device_point",
    "encode_line",
    "health_point",
    "limit_point",
    "park_point",
    "parse_line",
    "quarter_point",
    "setpoint_point",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# the fields of a reading, the park's and a company's
_READING = frozenset(
    {"grid_kw", "load_kw", "pv_kw", "pv_available_kw", "pv_available_estimated", "battery_kw"}
)

# measurement -> (tags it may carry, fields it may carry); docs/influxdb.md is generated from the same table
SCHEMA: dict[str, tuple[frozenset[str], frozenset[str] | None]] = {
    "park": (frozenset({"site"}), _READING | {"common_kw"}),
    "company": (frozenset({"site", "company"}), _READING | {"soc_pct"}),
    "device": (frozenset({"site", "company", "device"}), None),  # any snake_case numeric field with a unit
    "limit": (
        frozenset({"site", "company", "import_source", "export_source"}),
        frozenset({"import_limit_kw", "export_limit_kw"}),
    ),
    "setpoint": (
        frozenset({"site", "company", "mode"}),
        frozenset({"battery_setpoint_kw", "pv_limit_kw"}),
    ),
    "allocation": (
        frozenset({"site", "company"}),
        frozenset({"import_kwh", "export_kwh", "shared_in_kwh", "shared_out_kwh", "covered_s"}),
    ),
    "quarter": (
        frozenset({"site", "import_source", "export_source"}),
        frozenset(
            {
                "grid_kw",
                "import_kwh",
                "export_kwh",
                "import_limit_kw",
                "export_limit_kw",
                "over_cap",
                "pv_kwh",
                "load_kwh",
                "curtailed_kwh",
                "curtailed_estimated",
                "covered_s",
            }
        ),
    ),
    "command": (
        frozenset({"site", "company", "device", "command", "origin", "result"}),
        frozenset({"value", "accepted"}),
    ),
    "health": (frozenset({"site", "company", "device", "event"}), frozenset({"state", "count"})),
}


@dataclass(frozen=True, slots=True)
class Point:
    """One line of line protocol: ``measurement,tags fields timestamp``; ``ts_ms`` is UTC epoch ms."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, float]
    ts_ms: int
    key: str | None = field(default=None, compare=False)  # idempotency key for Spool.append (ledger rows)

    def line(self) -> str:
        return encode_line(self)


# --- line protocol ------------------------------------------------------------------------------------------


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{kind} {name!r} is not snake_case ([a-z][a-z0-9_]*)")


def _escape_tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _format_float(value: float) -> str:
    # repr is the shortest text that reads back as the same double; line protocol takes 1e-05 as well
    return repr(float(value))


def encode_line(point: Point) -> str:
    """Line protocol for one point; tags sorted (InfluxDB's recommendation); raises on a bad point.

    Names are checked against snake_case; fields must be finite numbers (a NaN
    or inf is not representable in line protocol: leave the field out, which
    is how "not available" is written). Tag values may not be empty.
    """
    _check_name("measurement", point.measurement)
    if not point.fields:
        raise ValueError(f"{point.measurement}: a point needs at least one field")
    parts = [point.measurement]
    for k in sorted(point.tags):
        v = point.tags[k]
        _check_name("tag", k)
        if not v:
            raise ValueError(f"{point.measurement}: tag {k} is empty")
        parts.append(f"{k}={_escape_tag(v)}")
    head = ",".join(parts)
    body = []
    for k in sorted(point.fields):
        _check_name("field", k)
        value = float(point.fields[k])  # a bool becomes 0.0 / 1.0
        if not math.isfinite(value):
            raise ValueError(f"{point.measurement}.{k}: not a finite number: {value}")
        body.append(f"{k}={_format_float(value)}")
    return f"{head} {','.join(body)} {int(point.ts_ms)}"


def parse_line(line: str) -> Point:
    """Read back a line written by :func:`encode_line` (numeric fields, escaped tags)."""
    # the three sections are separated by unescaped spaces (our lines quote nothing)
    sections = _raw_split(line.strip(), " ")
    if len(sections) != 3:
        raise ValueError(f"not a line of hubctl line protocol: {line!r}")
    head, fields_text, ts_text = sections
    # measurement and tag pairs are separated by unescaped commas; keys and values by unescaped '='
    raw_parts = _raw_split(head, ",")
    measurement = raw_parts[0]
    tags: dict[str, str] = {}
    for part in raw_parts[1:]:
        k, v = _raw_split(part, "=", maxsplit=1)
        tags[_unescape(k)] = _unescape(v)
    fields: dict[str, float] = {}
    for part in fields_text.split(","):
        k, v = part.split("=", 1)
        fields[k] = float(v.rstrip("i"))
    return Point(_unescape(measurement), tags, fields, int(ts_text))


def _raw_split(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split at unescaped ``sep`` keeping escapes in place (unescaped later)."""
    out: list[str] = []
    start = 0
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep and (maxsplit < 0 or len(out) < maxsplit):
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _unescape(text: str) -> str:
    """Drop each escaping backslash (a lone one at the end stays); a NUL character is dropped too."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch != "\x00":
            out.append(ch)
        i += 1
    return "".join(out)


# --- Builders: one per measurement of docs/influxdb.md ------------------------------------------------------


def _ms(ts_utc: float) -> int:
    return round(ts_utc * 1000)


def _numeric(values: Mapping[str, float | None]) -> dict[str, float]:
    """Leave out what is not available (None) or not finite: a missing field, never a fake 0."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _point(
    measurement: str,
    ts_utc: float,
    tags: Mapping[str, str | None],
    fields: Mapping[str, float],
    key_prefix: str | None = None,
) -> Point:
    """The one way a builder makes its point: empty tags left out, the time in ms, the idempotency key
    ``<key_prefix>:<ts_ms>`` when there is a prefix, checked against :data:`SCHEMA`."""
    ts = _ms(ts_utc)
    key = None if key_prefix is None else f"{key_prefix}:{ts}"
    return _checked(Point(measurement, {k: v for k, v in tags.items() if v}, fields, ts, key=key))


def _point_if_any(
    measurement: str, ts_utc: float, tags: Mapping[str, str | None], values: Mapping[str, float | None]
) -> Point | None:
    """The point of the available values; ``None`` when none is (nothing to record)."""
    fields = _numeric(values)
    return _point(measurement, ts_utc, tags, fields) if fields else None


def park_point(site: str, ts_utc: float, **fields: float | None) -> Point:
    """Park reading: ``grid_kw`` (+ import), ``load_kw``, ``pv_kw``, ``pv_available_kw`` (with
    ``pv_available_estimated`` 0/1), ``battery_kw``; on a shared connection ``common_kw``, the park
    meter less the companies' meters."""
    return _point("park", ts_utc, {"site": site}, _numeric(fields))


def company_point(site: str, company: str, ts_utc: float, **fields: float | None) -> Point:
    """Company reading: the park fields plus ``soc_pct``."""
    return _point("company", ts_utc, {"site": site, "company": company}, _numeric(fields))


def device_point(site: str, company: str | None, device: str, ts_utc: float, **fields: float | None) -> Point:
    """Raw device reading; field names carry their unit (``power_kw``, ``energy_kwh``, ``voltage_v``)."""
    return _point("device", ts_utc, {"site": site, "company": company, "device": device}, _numeric(fields))


def limit_point(
    site: str,
    company: str | None,
    ts_utc: float,
    import_limit_kw: float | None,
    import_source: str,
    export_limit_kw: float | None,
    export_source: str,
) -> Point | None:
    """The caps in force with their source (``contract``, ``window 16:00-20:00``, ``operator``, ...).

    ``None`` when the connection has no cap in either direction (nothing to record).
    """
    tags = {"site": site, "company": company, "import_source": import_source, "export_source": export_source}
    return _point_if_any(
        "limit", ts_utc, tags, {"import_limit_kw": import_limit_kw, "export_limit_kw": export_limit_kw}
    )


def setpoint_point(
    site: str,
    company: str,
    ts_utc: float,
    battery_setpoint_kw: float | None,
    pv_limit_kw: float | None,
    mode: str = "normal",
) -> Point | None:
    """A control decision for one company; a missing field means "no battery" or "PV not limited".

    ``None`` when there is neither (nothing was decided for this company).
    """
    tags = {"site": site, "company": company, "mode": mode}
    return _point_if_any(
        "setpoint", ts_utc, tags, {"battery_setpoint_kw": battery_setpoint_kw, "pv_limit_kw": pv_limit_kw}
    )


def allocation_point(
    site: str,
    company: str,
    interval_start_utc: float,
    import_kwh: float,
    export_kwh: float,
    shared_in_kwh: float,
    shared_out_kwh: float,
    covered_s: float,
) -> Point:
    """One company's ledger row; timestamped at the interval start; idempotent key for the spool.

    Its fields are taken as they are (not through ``_numeric``): a ledger row has every figure, and a
    non-finite one is refused when the line is encoded rather than left out.
    """
    fields = {
        "import_kwh": import_kwh,
        "export_kwh": export_kwh,
        "shared_in_kwh": shared_in_kwh,
        "shared_out_kwh": shared_out_kwh,
        "covered_s": covered_s,
    }
    tags = {"site": site, "company": company}
    return _point("allocation", interval_start_utc, tags, fields, key_prefix=f"allocation:{company}")


def quarter_point(site: str, interval_start_utc: float, **values: float | str | None) -> Point:
    """The park's quarter-hour: mean ``grid_kw``, mean caps with their sources, energies, ``over_cap`` 0/1."""
    tags = {
        "site": site,
        "import_source": str(values.pop("import_source", "") or ""),
        "export_source": str(values.pop("export_source", "") or ""),
    }
    fields = _numeric({k: v for k, v in values.items() if not isinstance(v, str)})
    return _point("quarter", interval_start_utc, tags, fields, key_prefix="quarter")


def command_point(
    site: str,
    ts_utc: float,
    command: str,
    origin: str,
    result: str,
    value: float | None = None,
    company: str | None = None,
    device: str | None = None,
) -> Point:
    """Audit of a command: what (``command``), from where (``origin``), and the answer (``result``)."""
    tags = {
        "site": site,
        "company": company,
        "device": device,
        "command": command,
        "origin": origin,
        "result": result,
    }
    fields = _numeric({"value": value, "accepted": 1.0 if result == "accepted" else 0.0})
    return _point("command", ts_utc, tags, fields)


def health_point(
    site: str,
    ts_utc: float,
    event: str,
    state: float,
    count: float | None = None,
    company: str | None = None,
    device: str | None = None,
) -> Point:
    """A health transition (``device_online`` 1/0, ``failsafe`` 1/0, ``spool_drop`` with ``count``)."""
    tags = {"site": site, "company": company, "device": device, "event": event}
    return _point("health", ts_utc, tags, _numeric({"state": state, "count": count}))


def _checked(point: Point) -> Point:
    allowed_tags, allowed_fields = SCHEMA[point.measurement]
    extra = set(point.tags) - allowed_tags
    if extra:
        raise ValueError(f"{point.measurement}: tags not in the schema: {sorted(extra)}")
    if allowed_fields is not None:
        extra = set(point.fields) - allowed_fields
        if extra:
            raise ValueError(f"{point.measurement}: fields not in the schema: {sorted(extra)}")
    for k in point.fields:
        _check_name("field", k)
    if not point.fields:
        raise ValueError(f"{point.measurement}: a point needs at least one field")
    return point
