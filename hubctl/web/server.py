"""The park page's HTTP server (aiohttp): `WebPage`, one asyncio task beside control (docs/web.md).

Routes (all but `/`, `/static/*`, `/api/login` need a role: `hubctl.web.access`):

    GET  /                          the page (static HTML; it asks /api/me, shows the login without a role)
    GET  /static/NAME               the page's script and style, uPlot (vendored: no CDN)
    POST /api/login                 form or JSON `token`: a session cookie; 401 for a wrong token
    POST /api/logout
    GET  /api/me                    the role
    GET  /api/state                 the last cycle as the role may see it (`views.state_view`)
    GET  /api/events                the same, pushed as server-sent events, at most once a second
    GET  /api/history               the 24 h chart, a point a minute (`views.chart_view`)
    GET  /api/statements            the months in the ledger
    GET  /api/statements/MONTH      that month's statements (a company: its own) and KPIs (the manager)
    GET  /api/statements/MONTH.csv  the statements as `hubctl report --format csv` writes them
    GET  /metrics                   Prometheus (`hubctl.web.metrics`), the manager's token as Bearer

Never on the control path: the control loop only calls `Live.cycle` (after every cycle); this
task reads the state document through the callable the gateway gives it (`Sources.state`, the
operator API's very document) once a second when SSE clients are connected, and on requests.
Statements are computed in a worker thread (`hubctl.data.report_load.load_ledger`, then
`report.build`, exactly as `hubctl report --config` does with the same prices; cached until the
ledger file changes).

Failures are logged once and control goes on: a port that cannot be bound (taken, not allowed) is
logged once and tried again every 30 s in silence (logged again when it works); a handler that
raises answers 500 and is logged the first time per route; a browser that goes away ends its
event stream (the write fails; nothing is logged). The access log is off (the journal is the
gateway's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hubctl.web.access import COOKIE, SESSION_S, Access, Role
from hubctl.web.live import CHART_S, seed_from_spool
from hubctl.web.metrics import GatewayCollector, registry
from hubctl.web.views import chart_view, month_view, state_view

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from hubctl.config.resolve import WebSettings
    from hubctl.config.site import SiteConfig
    from hubctl.data import report
    from hubctl.data.spool import SpoolStats
    from hubctl.web.live import Live

__all__ = ["PUSH_EVERY_S", "Sources", "WebPage"]

log = logging.getLogger("hubctl.web")

STATIC = Path(__file__).resolve().parent / "static"
PUSH_EVERY_S = 1.0  # server-sent events: at most one state a second
KEEPALIVE_S = 15.0  # a comment on an idle stream, so that a browser gone away is noticed
RETRY_BIND_S = 30.0
FIRST_CYCLE_WAIT_S = 30.0  # the page opens after the first control cycle, or after this long without one
# the page loads nothing from elsewhere, is framed by nobody, and is never sniffed as another type
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}$")
_STATIC_NAMES = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Sources:
    """What the gateway lends the page: read-only views of its own state."""

    state: Callable[[], dict[str, Any] | None]  # the state document of the last cycle (None: no cycle yet)
    devices: Callable[[], Mapping[str, str]]  # device id -> health ("up", "down", ...)
    spool_stats: Callable[[], SpoolStats | None]
    now_utc: Callable[[], float]  # the service's wall clock (simulated under --speed)
    ledger_path: Path | None  # None: no state directory, no statements
    spool_path: Path | None


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_plain)
    return web.Response(text=body, status=status, content_type="application/json")


def _plain(value: Any) -> Any:
    return str(value)


def _finite(obj: Any) -> Any:
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class WebPage:
    """The park page and `/metrics` on one listener (module docstring)."""

    def __init__(self, cfg: SiteConfig, settings: WebSettings, live: Live, sources: Sources) -> None:
        self.cfg = cfg
        self.settings = settings
        self.live = live
        self.sources = sources
        self.access = Access(settings)
        self.companies = [c.id for c in cfg.companies]
        self.device_company = {d.id: d.company for d in cfg.devices}
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._client_roles: dict[asyncio.Queue[bytes | None], Role] = {}
        self._failed_routes: set[str] = set()
        self._statements: tuple[tuple[float, ...], list[report.MonthReport]] | None = None
        self.bound = asyncio.Event()  # set once the port is bound (the tests and the demo wait for it)
        collector = GatewayCollector(
            cfg.site.id,
            live,
            sources.devices,
            sources.spool_stats,
            lambda: len(self._clients),
            lambda: self.access.failures,
        )
        self._registry = registry(collector)
        self.app = self._make_app()

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.settings.port}/"

    # --- the task ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Bind (retried every 30 s, logged once), seed the chart from the spool, push until cancelled."""
        # the control loop's start first: its pollers' first pass sets the phase of polls against
        # cycles, and the page's set-up in the same event loop must not shift it (docs/web.md)
        for _ in range(round(FIRST_CYCLE_WAIT_S / 0.1)):
            if self.live.revision:
                break
            await asyncio.sleep(0.1)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await self._bind(runner)
            seeding = asyncio.create_task(self._seed(), name="web chart seed")
            try:
                await self._push()
            finally:
                seeding.cancel()
        finally:
            for queue in list(self._clients):  # every event stream ends, then the server stops
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
            await runner.cleanup()

    async def _bind(self, runner: web.AppRunner) -> None:
        failed = False
        while True:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            try:
                await site.start()
            except OSError as exc:
                if not failed:
                    log.error(  # noqa: TRY400 - the port's state, not a bug: one line, no traceback
                        "park page: cannot listen on %s:%d (%s, from %s): control goes on without the page; "
                        "trying again every %.0f s",
                        self.settings.host,
                        self.settings.port,
                        exc.strerror or exc,
                        self.settings.source,
                        RETRY_BIND_S,
                    )
                failed = True
                await asyncio.sleep(RETRY_BIND_S)
                continue
            break
        log.info("park page at %s%s", self.url, " (the port is free again)" if failed else "")
        self.bound.set()

    async def _seed(self) -> None:
        path = self.sources.spool_path
        if path is None:
            return
        now = self.sources.now_utc()
        try:
            minutes = await asyncio.to_thread(seed_from_spool, path, now - CHART_S, now)
        except Exception:  # a damaged spool leaves the chart to this run's minutes
            log.exception("park page: the chart's hours before the start could not be read from %s", path)
            return
        self.live.seed(minutes)

    async def _push(self) -> None:
        """Every PUSH_EVERY_S: the state to every event stream, when a cycle ran since the last push."""
        sent = -1
        idle = 0.0
        while True:
            await asyncio.sleep(PUSH_EVERY_S)
            idle += PUSH_EVERY_S
            if not self._clients:
                continue
            revision = self.live.revision
            if revision != sent:
                by_role: dict[Role, bytes] = {}
                for queue in list(self._clients):
                    role = self._client_roles[queue]
                    if role not in by_role:
                        by_role[role] = self._event(role)
                    _offer(queue, by_role[role])
                sent, idle = revision, 0.0
            elif idle >= KEEPALIVE_S:
                for queue in list(self._clients):
                    _offer(queue, b": keepalive\n\n")
                idle = 0.0

    def _event(self, role: Role) -> bytes:
        data = self._state(role)
        return b"data: " + json.dumps(data, separators=(",", ":"), default=_plain).encode() + b"\n\n"

    def _state(self, role: Role) -> dict[str, Any] | None:
        doc = self.sources.state()
        if doc is None:
            return None
        view: dict[str, Any] = _finite(state_view(doc, role, self.live.quarter(), self.device_company))
        return view

    # --- the application -----------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/me", self._me)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/api/statements", self._months)
        app.router.add_get(r"/api/statements/{month:[0-9]{4}-[0-9]{2}}.csv", self._month_csv)
        app.router.add_get(r"/api/statements/{month:[0-9]{4}-[0-9]{2}}", self._month)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
            if route not in self._failed_routes:
                log.exception("park page: %s failed (logged once per route; control goes on)", route)
            self._failed_routes.add(route)
            return _json({"error": "internal error"}, status=500)
        if not response.prepared:  # an event stream has sent its headers already
            response.headers.update(_SECURITY_HEADERS)
        return response

    def _role(self, request: web.Request) -> Role:
        """The request's role, or 401 (a wrong token counted and logged once; no credentials: not logged)."""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            role = self.access.check(auth[7:].strip())
            if role is None:
                self.access.failed(request.remote)
                raise _unauthorized()
            return role
        sid = request.cookies.get(COOKIE)
        if sid:
            role = self.access.session(sid)
            if role is not None:
                return role
        raise _unauthorized()

    async def _index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC_NAMES:
            raise web.HTTPNotFound
        return web.FileResponse(STATIC / name, headers={"Content-Type": _STATIC_NAMES[name]})

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            body = await request.json()
            token = body.get("token") if isinstance(body, dict) else None
        else:
            token = (await request.post()).get("token")
        if not isinstance(token, str) or not token:
            raise _unauthorized()
        found = self.access.login(token, request.remote)
        if found is None:
            raise _unauthorized()
        role, sid = found
        response = _json({"manager": role.manager, "company": role.company})
        response.set_cookie(COOKIE, sid, max_age=int(SESSION_S), httponly=True, samesite="Strict", path="/")
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.access.logout(request.cookies.get(COOKIE))
        response = _json({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _me(self, request: web.Request) -> web.StreamResponse:
        role = self._role(request)
        return _json(
            {
                "manager": role.manager,
                "company": role.company,
                "site": self.cfg.site.id,
                "site_name": self.cfg.site.name or self.cfg.site.id,
                "companies": self.companies if role.manager else [role.company],
                "timezone": self.cfg.site.timezone,
            }
        )

    async def _api_state(self, request: web.Request) -> web.StreamResponse:
        return _json(self._state(self._role(request)))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        role = self._role(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._clients.add(queue)
        self._client_roles[queue] = role
        try:
            await response.write(b"retry: 2000\n\n" + self._event(role))
            while True:
                data = await queue.get()
                if data is None:
                    break
                await response.write(data)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self._clients.discard(queue)
            self._client_roles.pop(queue, None)
        return response

    async def _history(self, request: web.Request) -> web.StreamResponse:
        role = self._role(request)
        now = self.sources.now_utc()
        view = chart_view(self.live.chart(now), role, self.companies)
        view["now"] = now
        return _json(_finite(view))

    async def _load_months(self) -> list[report.MonthReport] | None:
        path = self.sources.ledger_path
        if path is None or not path.is_file():
            return None
        key = tuple(p.stat().st_mtime for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        if self._statements is not None and self._statements[0] == key:
            return self._statements[1]
        # numpy and the report code only once statements are asked for (the gateway's memory)
        from hubctl.data import report, report_load  # noqa: PLC0415

        r = self.cfg.report
        prices = report.Prices(r.shared_in_ct_per_kwh, r.shared_out_ct_per_kwh, r.co2_kg_per_kwh)

        def build() -> list[report.MonthReport]:
            return report.build(report_load.load_ledger(self.cfg, path, None, None, prices))

        months = await asyncio.to_thread(build)
        self._statements = (key, months)
        return months

    async def _months(self, request: web.Request) -> web.StreamResponse:
        self._role(request)
        months = await self._load_months()
        if months is None:
            return _json({"months": [], "ledger": False})
        return _json({"months": [m.month for m in months], "ledger": True})

    async def _one_month(self, request: web.Request) -> tuple[Role, report.MonthReport]:
        role = self._role(request)
        month = request.match_info["month"]
        found = next((m for m in await self._load_months() or [] if m.month == month), None)
        if not _MONTH.match(month) or found is None:
            raise web.HTTPNotFound(text=f"no statements for {month}")
        return role, found

    async def _month(self, request: web.Request) -> web.StreamResponse:
        role, month = await self._one_month(request)
        return _json(_finite(month_view(month, role)))

    async def _month_csv(self, request: web.Request) -> web.StreamResponse:
        role, month = await self._one_month(request)
        from hubctl.data.report_render import statements_csv  # noqa: PLC0415 - numpy: on demand

        rows = [s for s in month.statements if role.company in {None, s.company}]
        suffix = "" if role.company is None else f"-{role.company}"
        name = f"statements-{self.cfg.site.id}-{month.month}{suffix}.csv"
        return web.Response(
            text=statements_csv(rows),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if not self._role(request).manager:
            raise web.HTTPForbidden(text="/metrics is the park manager's")
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _offer(queue: asyncio.Queue[bytes | None], data: bytes) -> None:
    """The newest state replaces one the browser has not taken yet (a slow browser never piles up)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        if queue.full():
            queue.get_nowait()
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(data)


def _unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=json.dumps({"error": "wrong or missing credentials"}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="hubctl"'},
    )
