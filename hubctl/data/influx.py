"""Points for InfluxDB: the schema, line protocol, the writer and the forwarder that drains the spool.

The schema is documented in docs/influxdb.md; every point is built by one of
the ``*_point`` functions below, so names cannot drift from the document.

Decisions:

- **One wire format, the InfluxDB v2 write API** (``POST /api/v2/write``),
  through influxdb-client's *synchronous* ``WriteApi``. InfluxDB 2.x and 3.x
  accept it, 1.8+ does in compatibility mode (token ``user:password``, org
  ``-``, bucket ``database/retention-policy``) and VictoriaMetrics does as
  well (it ignores org and bucket). The batching ``WriteApi`` is not used: it
  drops a batch once its retries run out, and the async client does not retry
  at all (DOMAIN.md). Here the client makes exactly one attempt per call
  (``retries=False``); the :class:`Forwarder` owns retry and backoff, and a
  batch leaves the spool only after the server answered 2xx.
- **Precision is explicit: milliseconds** (``WritePrecision.MS``) on every
  request, and every line carries its timestamp. A 1 s control cycle needs no
  more; VictoriaMetrics keeps milliseconds anyway.
- **Names are snake_case** (checked), **fields are numeric only**: floats,
  plus booleans written as 0/1 floats. VictoriaMetrics stores a string field
  as 0, so anything textual (the source of a limit, a command's result) is a
  tag; tags hold low-cardinality values only (slugs, sources, kinds).
  VictoriaMetrics names a series ``<measurement>_<field>`` with the tags as
  labels.
- **Line protocol is written here**, not by ``influxdb_client.Point``: the
  spool stores the lines, so the encoder must be cheap and its output stable;
  :func:`parse_line` reads them back for ``hubctl export --format csv``.
- **Delivery is at least once, and duplicates are harmless in InfluxDB**: a
  point is identified by measurement, tags and timestamp, and InfluxDB
  overwrites an identical point. A duplicate can only arise when the server
  stored a batch but its answer was lost (a timeout); VictoriaMetrics keeps
  such a duplicate unless started with ``-dedup.minScrapeInterval=1ms``
  (docs/influxdb.md). A server that is simply down or refuses connections
  causes no duplicate: nothing was stored, the batch stays in the spool.
- Errors are mapped once, here: :class:`InfluxUnavailableError` (retry:
  network errors, timeouts, 5xx, 429, and 401/403/404, which an operator
  fixes without the data being wrong) and :class:`InfluxRejectedError`
  (400, 413, 422: the data itself; the forwarder bisects the batch to find
  the bad lines and drops only those, counted and logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubctl.errors import InfluxRejectedError, InfluxUnavailableError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from hubctl.data.spool import Spool

__all__ = [
    "Forwarder",
    "InfluxRejectedError",
    "InfluxUnavailableError",
    "InfluxWriter",
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

log = logging.getLogger("hubctl.influx")  # the name the journal has always shown

PRECISION = "ms"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# measurement -> (tags it may carry, fields it may carry); docs/influxdb.md is generated from the same table
SCHEMA: dict[str, tuple[frozenset[str], frozenset[str] | None]] = {
    "park": (
        frozenset({"site"}),
        frozenset({"grid_kw", "load_kw", "pv_kw", "pv_available_kw", "battery_kw"}),
    ),
    "company": (
        frozenset({"site", "company"}),
        frozenset({"grid_kw", "load_kw", "pv_kw", "pv_available_kw", "battery_kw", "soc_pct"}),
    ),
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


def _split_unescaped(text: str, sep: str) -> list[str]:
    out: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i + 1])
            i += 2
            continue
        if ch == sep:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return out


def _split_sections(line: str) -> list[str]:
    """The three space-separated sections of a line, honouring backslash escapes (our lines quote nothing)."""
    sections: list[str] = []
    start = 0
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == " ":
            sections.append(line[start:i])
            start = i + 1
        i += 1
    sections.append(line[start:])
    return sections


def parse_line(line: str) -> Point:
    """Read back a line written by :func:`encode_line` (numeric fields, escaped tags)."""
    sections = _split_sections(line.strip())
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
    return "".join(_split_unescaped(text, "\x00"))


# --- Builders: one per measurement of docs/influxdb.md ------------------------------------------------------


def _ms(ts_utc: float) -> int:
    return round(ts_utc * 1000)


def _numeric(values: Mapping[str, float | None]) -> dict[str, float]:
    """Leave out what is not available (None) or not finite: a missing field, never a fake 0."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _tags(**tags: str | None) -> dict[str, str]:
    return {k: v for k, v in tags.items() if v}


def park_point(site: str, ts_utc: float, **fields: float | None) -> Point:
    """Park reading: ``grid_kw`` (+ import), ``load_kw``, ``pv_kw``, ``pv_available_kw``, ``battery_kw``."""
    return _checked(Point("park", _tags(site=site), _numeric(fields), _ms(ts_utc)))


def company_point(site: str, company: str, ts_utc: float, **fields: float | None) -> Point:
    """Company reading: the park fields plus ``soc_pct``."""
    return _checked(Point("company", _tags(site=site, company=company), _numeric(fields), _ms(ts_utc)))


def device_point(site: str, company: str | None, device: str, ts_utc: float, **fields: float | None) -> Point:
    """Raw device reading; field names carry their unit (``power_kw``, ``energy_kwh``, ``voltage_v``)."""
    return _checked(
        Point("device", _tags(site=site, company=company, device=device), _numeric(fields), _ms(ts_utc))
    )


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
    fields = _numeric({"import_limit_kw": import_limit_kw, "export_limit_kw": export_limit_kw})
    if not fields:
        return None
    tags = _tags(site=site, company=company, import_source=import_source, export_source=export_source)
    return _checked(Point("limit", tags, fields, _ms(ts_utc)))


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
    fields = _numeric({"battery_setpoint_kw": battery_setpoint_kw, "pv_limit_kw": pv_limit_kw})
    if not fields:
        return None
    return _checked(Point("setpoint", _tags(site=site, company=company, mode=mode), fields, _ms(ts_utc)))


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
    """One company's ledger row; timestamped at the interval start; idempotent key for the spool."""
    fields = {
        "import_kwh": import_kwh,
        "export_kwh": export_kwh,
        "shared_in_kwh": shared_in_kwh,
        "shared_out_kwh": shared_out_kwh,
        "covered_s": covered_s,
    }
    ts = _ms(interval_start_utc)
    return _checked(
        Point("allocation", _tags(site=site, company=company), fields, ts, key=f"allocation:{company}:{ts}")
    )


def quarter_point(site: str, interval_start_utc: float, **values: float | str | None) -> Point:
    """The park's quarter-hour: mean ``grid_kw``, mean caps with their sources, energies, ``over_cap`` 0/1."""
    tags = _tags(
        site=site,
        import_source=str(values.pop("import_source", "") or ""),
        export_source=str(values.pop("export_source", "") or ""),
    )
    fields = _numeric({k: v for k, v in values.items() if not isinstance(v, str)})
    ts = _ms(interval_start_utc)
    return _checked(Point("quarter", tags, fields, ts, key=f"quarter:{ts}"))


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
    tags = _tags(site=site, company=company, device=device, command=command, origin=origin, result=result)
    fields = _numeric({"value": value, "accepted": 1.0 if result == "accepted" else 0.0})
    return _checked(Point("command", tags, fields, _ms(ts_utc)))


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
    tags = _tags(site=site, company=company, device=device, event=event)
    return _checked(Point("health", tags, _numeric({"state": state, "count": count}), _ms(ts_utc)))


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


# --- Writer -------------------------------------------------------------------------------------------------


_RETRY_STATUSES = {401, 403, 404, 408, 425, 429}
_REJECT_STATUSES = {400, 413, 422}


class InfluxWriter:
    """Writes lines of line protocol through influxdb-client's synchronous WriteApi, one attempt per call.

    Blocking (it is meant for ``asyncio.to_thread``). ``url`` is the server's
    base URL (``http://host:8086`` for InfluxDB, ``http://host:8428`` for
    VictoriaMetrics).
    """

    def __init__(
        self, url: str, bucket: str, org: str = "-", token: str = "", timeout_s: float = 10.0
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415 - heavy, only when used
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415

        self.url = url
        self.bucket = bucket
        self.org = org
        self._precision: Any = WritePrecision.MS  # the stubs type the enum's members as str
        self._client = InfluxDBClient(
            url=url, token=token, org=org, timeout=int(timeout_s * 1000), retries=False
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> None:
        """POST the lines; return on 2xx, else raise InfluxUnavailableError or InfluxRejectedError."""
        from influxdb_client.rest import ApiException  # noqa: PLC0415
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        try:
            self._api.write(bucket=self.bucket, org=self.org, record=body, write_precision=self._precision)
        except ApiException as exc:
            status = int(exc.status or 0)
            msg = _api_message(exc)
            if status in _REJECT_STATUSES:
                raise InfluxRejectedError(status, msg) from exc
            raise InfluxUnavailableError(f"HTTP {status}: {msg}") from exc
        except (HTTPError, OSError) as exc:
            raise InfluxUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return str(body or getattr(exc, "reason", "") or "")[:300]


# --- Forwarder ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ForwarderStats:
    sent_points: int = 0
    sent_batches: int = 0
    rejected_points: int = 0
    failures: int = 0
    last_error: str | None = None
    down_since: float | None = None  # monotonic s, while the server is unreachable


class Forwarder:
    """Drains the spool into InfluxDB: batches leave the spool only once the server accepted them.

    ``await forwarder.run()`` as a task; ``await forwarder.stop()`` ends it
    after the batch in flight (so a batch is never left half-acknowledged).
    While the server is away it backs off exponentially with full jitter
    between ``backoff_min_s`` and ``backoff_max_s``; the spool keeps
    everything meanwhile (within its bounds). The blocking parts (SQLite, HTTP)
    run in worker threads, so the event loop, and the control loop on it, never
    wait for the server or the disk.
    """

    def __init__(
        self,
        spool: Spool,
        writer: InfluxWriter,
        batch_points: int = 5000,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        idle_s: float = 0.5,
    ) -> None:
        self.spool = spool
        self.writer = writer
        self.batch_points = batch_points
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.idle_s = idle_s
        self.stats = ForwarderStats()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Skip the idle wait (e.g. after a large append); harmless at any time."""
        self._wake.set()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await self._done.wait()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._stop.is_set():
            return
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self) -> None:
        backoff = self.backoff_min_s
        try:
            while not self._stop.is_set():
                batch = await asyncio.to_thread(self.spool.peek, self.batch_points)
                if not batch.lines:
                    await self._sleep(self.idle_s)
                    continue
                try:
                    rejected = await asyncio.to_thread(self._send, batch.lines)
                except InfluxUnavailableError as exc:
                    self._down(str(exc))
                    delay = random.uniform(self.backoff_min_s, backoff)  # noqa: S311 - jitter, not crypto
                    backoff = min(backoff * 2, self.backoff_max_s)
                    await self._sleep(delay)
                    continue
                await asyncio.to_thread(self.spool.ack, batch, rejected)
                self._up(len(batch.lines) - rejected)
                backoff = self.backoff_min_s
        finally:
            self._done.set()

    def _send(self, lines: Sequence[str]) -> int:
        """Write the lines; bisect a rejected batch to drop only the bad lines; return how many were."""
        try:
            self.writer.write(lines)
        except InfluxRejectedError as exc:
            if len(lines) == 1:
                log.error("InfluxDB rejected a point, dropped: %s: %s", exc, lines[0][:200])  # noqa: TRY400
                self.stats.rejected_points += 1
                return 1
            mid = len(lines) // 2
            return self._send(lines[:mid]) + self._send(lines[mid:])
        return 0

    def _down(self, error: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = error
        if self.stats.down_since is None:
            self.stats.down_since = time.monotonic()
            log.warning("InfluxDB at %s unavailable (%s): spooling until it is back", self.writer.url, error)

    def _up(self, points: int) -> None:
        self.stats.sent_points += points
        self.stats.sent_batches += 1
        if self.stats.down_since is not None:
            log.warning(
                "InfluxDB at %s back after %.0f s; %d points waiting in the spool",
                self.writer.url,
                time.monotonic() - self.stats.down_since,
                self.spool.pending_points,
            )
            self.stats.down_since = None
