"""The park page's parts in process (hubctl.web, docs/web.md); the page in a browser: test_web_page.py.

- `Live`, the after-cycle step's store: its quarter-hour in progress is the gateway's `QuarterMeter`
  verdict (same steps in, same mean, mean cap, source and verdict out), across a boundary too;
  the chart's minute means.
- `Access`: a token opens its role only, the digests are what is kept, a wrong token is logged
  once per address and counted always, sessions end.
- `views`: a company's view of the state document, the chart and a month holds its own rows only.
- `web_settings`: `--web` over `web.listen`, a hash from the config or a token from the
  environment, never the token itself.
- The server over real HTTP on loopback (aiohttp's own server in this process): 401 without or with
  a wrong token, the event stream's first state, a port already taken logged once while the task
  goes on trying; the page waits for the first control cycle before it opens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from hubctl.config.resolve import web_settings
from hubctl.config.site import parse_config
from hubctl.core.limits import LimitsInForce
from hubctl.core.quarters import QuarterMeter
from hubctl.core.types import Decision
from hubctl.data.points import company_point, limit_point, park_point, setpoint_point
from hubctl.data.report import MonthKpis, MonthReport, Statement
from hubctl.data.spool import Spool, SpoolBounds
from hubctl.errors import ConfigError
from hubctl.web import server
from hubctl.web.access import Access, Role
from hubctl.web.live import Live, seed_from_spool
from hubctl.web.server import Sources, WebPage
from hubctl.web.views import chart_view, month_view, state_view

if TYPE_CHECKING:
    from pathlib import Path

T_Q = 900.0 * 1_978_000  # a quarter boundary
MANAGER = "the-park-managers-token-123"
ALPHA = "alphas-own-token-0123456"
CONFIG: dict[str, Any] = {
    "park": {"import_limit_kw": 100},
    "companies": [{"id": "alpha"}, {"id": "beta"}],
    "web": {"listen": "127.0.0.1:1"},
}


def _decision(cap: float | None, source: str, mode: str = "normal") -> Decision:
    return Decision((), (), mode, LimitsInForce(cap, source, 40.0, "contract"), {}, 0.0, 0.0, "test")


# --- Live -----------------------------------------------------------------------------------------------


def test_the_quarter_in_progress_is_the_meters_verdict() -> None:
    meter = QuarterMeter()
    live = Live(["alpha", "beta"], meter)
    for k in range(0, 900 + 300, 2):  # 2 s cycles; the cap drops at minute 10; a gap of readings
        cap, source = (50.0, "window 16:10-20:00") if k >= 600 else (100.0, "contract")
        park = None if 200 <= k < 260 else 90.0 + (k % 7)
        decision = _decision(cap, source)
        meter.add(T_Q + k, park, 2.0, decision)  # the gateway's quarter step
        live.cycle(T_Q + k, park, decision, [park, 0.0], 12.0)
        if k == 898:
            now = live.quarter()
            assert now is not None
        if k == 902:  # the quarter job, two seconds after the boundary
            (closed,) = meter.close_before(T_Q + 902)
    assert now is not None
    assert now.mean_kw == pytest.approx(closed.mean_kw)
    assert now.import_cap_kw == pytest.approx(closed.import_cap_kw)
    assert now.import_source == closed.import_source == "contract + window 16:10-20:00"
    assert now.over_cap is closed.over is True  # a mean of 93 kW against a mean cap of 82 kW
    assert now.covered_s == pytest.approx(closed.coverage * 900)
    assert live.closed is not None
    assert live.closed.covered_s == pytest.approx(now.covered_s)  # the quarter that ended is the one shown
    assert live.closed.over_cap is True
    assert live.quarters_over == 1
    nxt = live.quarter()
    assert nxt is not None
    assert nxt.start_utc == T_Q + 900
    assert nxt.covered_s == pytest.approx(300.0)


def test_the_chart_has_a_mean_a_minute_and_the_latency_histogram_counts_every_cycle() -> None:
    live = Live(["alpha"], QuarterMeter())
    for k in range(120):
        live.cycle(T_Q + k, float(k), _decision(100.0, "contract"), [None], 3.0)
    points = live.chart(T_Q + 120)
    assert [t for t, _ in points] == [T_Q, T_Q + 60]
    assert points[0][1]["park_kw"] == pytest.approx(29.5)
    assert points[1][1]["park_kw"] == pytest.approx(89.5)
    assert points[0][1]["import_cap_kw"] == 100.0
    assert "company:alpha" not in points[0][1]  # never read: a gap, not a zero
    assert sum(live.latency_counts) == live.cycles == 120
    assert live.latency_sum_s == pytest.approx(0.36)


def test_the_charts_hours_before_the_start_come_from_the_spool(tmp_path: Path) -> None:
    """What the gateway's SpoolSink stores, read back as minute means; a company's limit is not the park's."""
    now = T_Q + 3 * 60
    spool = Spool(tmp_path / "spool.sqlite", SpoolBounds(max_age_s=None), clock=lambda: now)
    for k in range(120):
        ts = T_Q + k
        points = [
            park_point("park", ts, grid_kw=float(k)),
            company_point("park", "alpha", ts, grid_kw=2.0 * k),
            limit_point("park", None, ts, 100.0, "contract", 40.0, "contract"),
            limit_point("park", "alpha", ts, 5.0, "own", None, "none"),
            setpoint_point("park", "alpha", ts, 1.0, None, mode="normal"),
        ]
        spool.append(p for p in points if p is not None)
    spool.close()
    minutes = seed_from_spool(tmp_path / "spool.sqlite", T_Q + 60, now)  # the first minute left out
    assert [t for t, _ in minutes] == [T_Q + 60]
    means = minutes[0][1]
    assert means["park_kw"] == pytest.approx(89.5)
    assert means["company:alpha"] == pytest.approx(179.0)
    assert means["import_cap_kw"] == 100.0  # the park's, not alpha's 5 kW
    assert means["export_cap_kw"] == 40.0
    assert seed_from_spool(tmp_path / "none.sqlite", T_Q, now) == []
    live = Live(["alpha"], QuarterMeter())
    live.cycle(T_Q + 150, 1.0, _decision(100.0, "contract"), [2.0], 3.0)
    live.seed(minutes)
    assert [t for t, _ in live.chart(now)] == [T_Q + 60, T_Q + 120]  # the spool's minute, then this run's


# --- Access ------------------------------------------------------------------------------------------------


def _settings(env: dict[str, str] | None = None, **web: Any) -> Any:
    cfg = parse_config({**CONFIG, "web": {**CONFIG["web"], **web}})
    settings = web_settings(cfg, None, env if env is not None else {})
    assert settings is not None
    return settings


def test_a_token_opens_its_own_role_only(caplog: pytest.LogCaptureFixture) -> None:
    env = {"HUBCTL_WEB_MANAGER_TOKEN": MANAGER, "HUBCTL_WEB_COMPANY_ALPHA_TOKEN": ALPHA}
    settings = _settings(
        env, company_token_sha256={"beta": hashlib.sha256(b"betas-token-01234567").hexdigest()}
    )
    assert MANAGER not in repr(settings)  # only digests leave the settings
    assert ALPHA not in repr(settings)
    now = [0.0]
    access = Access(settings, clock=lambda: now[0])
    assert access.check(MANAGER) == Role()
    assert access.check(ALPHA) == Role("alpha")
    assert access.check("betas-token-01234567") == Role("beta")
    assert access.check(ALPHA + "x") is None
    assert access.check("") is None
    with caplog.at_level(logging.WARNING, logger="hubctl.web"):
        for _ in range(5):
            assert access.login("wrong-token-0123456789", "192.0.2.7") is None
        assert access.login("wrong-token-0123456789", "192.0.2.8") is None
    warnings = [r.getMessage() for r in caplog.records if "wrong credentials" in r.getMessage()]
    assert len(warnings) == 2  # once per address
    assert "192.0.2.7" in warnings[0]
    assert access.failures == 6  # all counted
    found = access.login(ALPHA, "192.0.2.7")
    assert found is not None
    role, sid = found
    assert role == Role("alpha")
    assert access.session(sid) == Role("alpha")
    now[0] += 13 * 3600  # past the 12 h of a session
    assert access.session(sid) is None
    assert access.session("made-up") is None


def test_web_settings_take_the_flag_over_the_config_and_a_hash_over_nothing() -> None:
    cfg = parse_config({**CONFIG, "web": {"listen": "127.0.0.1:9000", "manager_token_sha256": "a" * 64}})
    flag = web_settings(cfg, "[::1]:9100", {})
    assert flag is not None
    assert (flag.host, flag.port, flag.source, flag.manager_digest) == ("::1", 9100, "--web", "a" * 64)
    conf = web_settings(cfg, None, {})
    assert conf is not None
    assert (conf.host, conf.port, conf.source) == ("127.0.0.1", 9000, "web.listen")
    off = parse_config({k: v for k, v in CONFIG.items() if k != "web"})
    assert web_settings(off, None, {"HUBCTL_WEB_MANAGER_TOKEN": MANAGER}) is None
    with pytest.raises(ConfigError, match=r"web\.company_token_sha256 names unknown companies: gamma"):
        parse_config({**CONFIG, "web": {"company_token_sha256": {"gamma": "b" * 64}}})
    with pytest.raises(ConfigError, match="not a SHA-256"):
        parse_config({**CONFIG, "web": {"manager_token_sha256": MANAGER}})
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_config({**CONFIG, "web": {"listen": "localhost"}})


# --- views --------------------------------------------------------------------------------------------------

DOC: dict[str, Any] = {
    "ts": T_Q,
    "site": "park",
    "mode": "normal",
    "reason": "holding the cap for alpha and beta",
    "park": {"power_kw": 80.0, "limits": {"import_limit_kw": 100.0, "import_source": "contract"}},
    "companies": {
        "alpha": {"power_kw": 50.0, "pv_kw": 1.0, "power_from_park_meter": True},
        "beta": {"power_kw": 30.0, "pv_kw": 2.0, "power_from_park_meter": False},
    },
    "devices": {
        "alpha-grid": {"health": "ok"},
        "beta-grid": {"health": "down"},
        "park-meter": {"health": "ok"},
    },
    "history": {"days": 3},
}
DEVICES = {"alpha-grid": "alpha", "beta-grid": "beta", "park-meter": None}


def test_a_company_sees_its_own_row_and_nothing_of_the_others() -> None:
    mine = state_view(DOC, Role("alpha"), None, DEVICES)
    assert set(mine["companies"]) == {"alpha"}
    assert mine["companies"]["alpha"]["power_kw"] == 50.0
    assert mine["companies"]["alpha"]["power_from_park_meter"] is True  # its figure is a stand-in
    assert set(mine["devices"]) == {"alpha-grid"}
    assert mine["down"] == []
    assert "beta" not in json.dumps(mine)
    assert "park" not in mine
    assert "history" not in mine
    everything = state_view(DOC, Role(), None, DEVICES)
    assert set(everything["companies"]) == {"alpha", "beta"}
    assert everything["down"] == ["beta-grid"]
    assert everything["park"]["power_kw"] == 80.0
    chart = chart_view(
        [(0, {"park_kw": 1.0, "company:alpha": 2.0, "company:beta": 3.0})], Role("alpha"), ["alpha", "beta"]
    )
    assert chart["series"] == {"company:alpha": [2.0]}


def test_a_company_gets_its_own_statement_and_no_kpis() -> None:
    def statement(company: str) -> Statement:
        return Statement("2026-06", company, 1.0, 2.0, 0.5, 0.5, 0.5, 1.5, 0.06, 0.05, -0.01)

    month = MonthReport("2026-06", [statement("alpha"), statement("beta")], MonthKpis("2026-06"), [])
    mine = month_view(month, Role("alpha"))
    assert [s["company"] for s in mine["statements"]] == ["alpha"]
    assert "kpis" not in mine
    everything = month_view(month, Role())
    assert [s["company"] for s in everything["statements"]] == ["alpha", "beta"]
    assert everything["kpis"]["quarters_over"] == 0


# --- the server, over HTTP on loopback --------------------------------------------------------------------


def _page(port: int, tmp: Path, state: dict[str, Any] | None) -> WebPage:
    env = {"HUBCTL_WEB_MANAGER_TOKEN": MANAGER, "HUBCTL_WEB_COMPANY_ALPHA_TOKEN": ALPHA}
    cfg = parse_config({**CONFIG, "web": {"listen": f"127.0.0.1:{port}"}})
    settings = web_settings(cfg, None, env)
    assert settings is not None
    sources = Sources(
        state=lambda: state,
        devices=dict,
        spool_stats=lambda: None,
        now_utc=lambda: T_Q,
        ledger_path=tmp / "ledger.sqlite",  # none there: no statements
        spool_path=None,
    )
    live = Live(["alpha", "beta"], QuarterMeter())
    live.cycle(T_Q, 80.0, _decision(100.0, "contract"), [50.0, 30.0], 5.0)  # the page opens after one
    return WebPage(cfg, settings, live, sources)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serve(page: WebPage) -> asyncio.Task[None]:
    task = asyncio.create_task(page.run())
    async with asyncio.timeout(5):
        await page.bound.wait()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_json_endpoints_answer_by_role(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = _free_port()
        page = _page(port, tmp_path, {**DOC, "devices": {}})
        task = await _serve(page)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
                async with http.get(base + "/api/state") as r:
                    assert r.status == 401
                async with http.get(
                    base + "/api/state", headers={"Authorization": "Bearer nope-nope-nope-nope"}
                ) as r:
                    assert r.status == 401
                alpha = {"Authorization": f"Bearer {ALPHA}"}
                async with http.get(base + "/api/state", headers=alpha) as r:
                    assert r.status == 200
                    assert set((await r.json())["companies"]) == {"alpha"}
                async with http.get(base + "/api/statements", headers=alpha) as r:
                    assert await r.json() == {"months": [], "ledger": False}
                async with http.get(base + "/api/statements/2026-06", headers=alpha) as r:
                    assert r.status == 404
                async with http.get(base + "/metrics", headers=alpha) as r:
                    assert r.status == 403
                async with http.get(base + "/api/events", headers=alpha) as r:
                    assert r.headers["Content-Type"] == "text/event-stream"
                    async for raw in r.content:
                        if raw.startswith(b"data: "):
                            assert set(json.loads(raw[6:])["companies"]) == {"alpha"}
                            break
                    assert page._clients  # the stream is counted while open
                async with http.post(base + "/api/login", json={"token": MANAGER}) as r:
                    assert r.status == 200
                    assert r.cookies["hubctl_session"]["httponly"]
                async with http.get(base + "/api/me") as r:  # the session cookie
                    assert (await r.json())["manager"] is True
                async with http.get(base + "/metrics") as r:
                    assert r.status == 200
                    assert "hubctl_cycles_total 1.0" in await r.text()
                async with http.get(base + "/static/uPlot.iife.min.js") as r:
                    assert r.status == 200
                async with http.get(base + "/") as r:  # nothing from elsewhere: gateways are offline
                    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
                async with http.get(base + "/static/..%2Fserver.py") as r:
                    assert r.status == 404
        finally:
            await _stop(task)

    asyncio.run(scenario())


def test_the_page_opens_after_the_first_cycle(tmp_path: Path) -> None:
    async def scenario() -> None:
        page = _page(_free_port(), tmp_path, None)
        page.live = live = Live(["alpha", "beta"], QuarterMeter())  # no cycle yet
        task = asyncio.create_task(page.run())
        await asyncio.sleep(0.3)
        assert not page.bound.is_set()
        live.cycle(T_Q, 80.0, _decision(100.0, "contract"), [50.0, 30.0], 5.0)
        async with asyncio.timeout(5):
            await page.bound.wait()
        await _stop(task)

    asyncio.run(scenario())


def test_a_port_taken_is_logged_once_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "RETRY_BIND_S", 0.05)

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = int(taken.getsockname()[1])
            page = _page(port, tmp_path, None)
            task = asyncio.create_task(page.run())
            await asyncio.sleep(0.5)  # about ten tries
            assert not page.bound.is_set()
        async with asyncio.timeout(5):  # the port is free again: the page comes up
            await page.bound.wait()
        await _stop(task)

    with caplog.at_level(logging.INFO, logger="hubctl.web"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot listen on" in m for m in lines) == 1, lines
    assert any("(the port is free again)" in m for m in lines)
