"""The park page (hubctl.web, docs/web.md) in a real headless Chromium against `hubctl run` (simulated park).

`hubctl simulate` and `hubctl run --web` as subprocesses over real Modbus TCP (the helpers of
test_service_e2e: `Park`, `Service`, accelerated 10x and 20x), Debian's `chromium` and `chromium-driver`
driven by selenium (the Makefile installs both). One run checks, as the issue's acceptance lists
them: the page shows the park's power within 2 s of a load step at the simulator (the push is at
most once a second); the import and export caps and their source; a company's login sees its own
row and statement only, and its token gets nothing else from the JSON endpoints either (state,
events, chart, statements, CSV, /metrics); the statement on the page and its CSV match `hubctl
report --format csv` for the same ledger; `/metrics`; a screenshot kept under the test's tmp dir
(its path printed). Then the browser is killed while its event stream is open: control goes on.
A second run starts with the page's port taken: control goes on, the failure is logged once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import REPO, free_port, leak_fixture
from test_service_e2e import _CHILDREN, SPEED, Park, Service

if TYPE_CHECKING:
    from collections.abc import Iterator

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (make .venv/bin/.installed does it)",
)
no_leaks = leak_fixture(_CHILDREN)

MANAGER = "manager-token-0123456789abcdef"
ALPHA = "alpha-token-0123456789abcdef"
BETA = "beta-token-0123456789abcdef"
PAGE_SPEED = 10.0  # the first test's acceleration (the others run at test_service_e2e's SPEED, 20x)
STEP_T_S = 400  # the load step at the simulator (simulated s; 40 s of real time at 10x)
# gamma 30 -> 230 kW at STEP_T_S: the park goes from about 0 kW (the batteries charge from the PV
# surplus) to about 30 kW (both discharge at full power), or up to 170 kW for the moment they ramp
PROFILES = "t_s,alpha.load_kw,alpha.pv_kw,beta.load_kw,beta.pv_kw,gamma.load_kw,gamma.pv_kw\n" + "".join(
    f"{t},{40 + (t // 7) % 3},80,{30 + (t // 11) % 2},50,{(30 if t < STEP_T_S else 230) + -(-t // 5) % 2},0\n"
    for t in sorted({*range(0, 7200, 5), STEP_T_S - 1})
)
MONTH = "2026-06"  # the scenario's day, 2026-06-22


def _driver() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))


@contextlib.contextmanager
def _browser() -> Iterator[webdriver.Chrome]:
    driver = _driver()
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):  # a browser the test killed: the driver is stopped all the same
            driver.quit()


def _login(driver: webdriver.Chrome, url: str, token: str) -> None:
    driver.get(url)
    wait = WebDriverWait(driver, 10)
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    wait.until(lambda d: d.find_element(By.ID, "page").is_displayed())
    wait.until(_companies_shown)


def _companies_shown(driver: webdriver.Chrome) -> list[str]:
    """The companies table's rows, read in one go (the table is redrawn with every pushed state)."""
    script = "return [...document.querySelectorAll('#companies tbody tr')].map(r => r.dataset.company)"
    return list(driver.execute_script(script))


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()


def _first_event(url: str, token: str) -> dict[str, Any]:
    """The first state pushed on `/api/events` (read off the stream, then the stream is closed)."""
    request = urllib.request.Request(url + "api/events", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: "):
                return dict(json.loads(line.removeprefix("data: ")))
    pytest.fail("the event stream ended without a state")


def _site(park: Park, tmp: Path, port: int) -> None:
    """The park's site config with a state directory, 5-minute sharing (settled every 15 s) and the page."""
    data = yaml.safe_load(park.config_path.read_text(encoding="utf-8"))
    data["storage"] = {"dir": str(tmp / "state")}
    data["sharing"] = {"key": "pro_rata", "interval_s": 300}
    data["web"] = {"listen": f"127.0.0.1:{port}"}
    park.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if _get(url)[0] == 200:
                return
        if proc.poll() is not None:
            pytest.fail(f"hubctl run exited {proc.returncode}: {proc.communicate()[1].decode()}")
        time.sleep(0.1)
    pytest.fail(f"no page at {url} within {timeout_s} s")


def _report_statements(config: Path, out: Path) -> list[list[str]]:
    """`hubctl report --format csv` on the service's ledger: statements.csv's rows of MONTH, header first."""
    subprocess.run(
        [sys.executable, "-m", "hubctl.cli", "report", "--config", str(config), "--format", "csv",
         "--out", str(out), "--no-plots"],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    rows = list(csv.reader((out / "statements.csv").open(encoding="utf-8", newline="")))
    return [rows[0], *(r for r in rows[1:] if r[0] == MONTH)]


def _page_statements(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """The statement table as the page shows it: company -> its cells (read in one go)."""
    script = (
        "return [...document.querySelectorAll('#statements tbody tr')]"
        ".map(r => [r.dataset.company, [...r.cells].map(c => c.textContent)])"
    )
    return {str(company): [str(c) for c in cells] for company, cells in driver.execute_script(script)}


def _browser_csv(driver: webdriver.Chrome) -> str:
    """The page's CSV link, fetched by the page itself (its session cookie)."""
    href = driver.find_element(By.ID, "csv").get_attribute("href")
    script = (
        "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done);"
    )
    return str(driver.execute_async_script(script, href))


def _chromium_pids(driver: webdriver.Chrome) -> list[int]:
    """The browser processes under this driver's chromedriver (children, from /proc)."""
    process = driver.service.process
    assert process is not None
    found, todo = [], [process.pid]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def _cycles_after(service: Service, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """`count` new control cycles in the trace (the test fails if control stopped)."""
    service.poll()
    start = len(service.cycles())
    service.wait_for(f"{count} more cycles", lambda _: len(service.cycles()) >= start + count, timeout_s)
    return service.cycles()[start:]


def _serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, speed: float = SPEED
) -> tuple[Park, Service, str]:
    """The test park (`hubctl simulate ... EXTRA`, accelerated SPEED times) and `hubctl run` serving
    its page: the page's URL, with the manager's, alpha's and beta's tokens in the environment."""
    park = Park(tmp_path, PROFILES, (100, 40), *extra, speed=speed)
    port = free_port()
    _site(park, tmp_path, port)
    monkeypatch.setenv("HUBCTL_WEB_MANAGER_TOKEN", MANAGER)
    monkeypatch.setenv("HUBCTL_WEB_COMPANY_ALPHA_TOKEN", ALPHA)
    monkeypatch.setenv("HUBCTL_WEB_COMPANY_BETA_TOKEN", BETA)
    return park, Service(tmp_path, park), f"http://127.0.0.1:{port}/"


def test_the_park_page_in_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10x, not 20x: the settled cycles' power is judged here, and at 20x a cycle has 50 ms of real
    # time; with one more busy process on the 2 cores the readings lagged a cycle behind and the
    # batteries swung (median 8 kW, 1 run in 4); at 10x the step comes 40 s into the run
    park, service, url = _serve(tmp_path, monkeypatch, speed=PAGE_SPEED)
    try:
        _wait_http(url, service.proc)
        with _browser() as manager:
            _login(manager, url, MANAGER)
            # the caps in force and their source (the contract: 150 kW import, 40 kW export)
            WebDriverWait(manager, 10).until(lambda d: _text(d, "import-cap") != "–")
            assert _text(manager, "import-cap") == "150.0"
            assert _text(manager, "import-source") == "contract"
            assert _text(manager, "export-cap") == "40.0"
            assert _text(manager, "export-source") == "contract"
            # the mode shown is that of the cycle just run: normal, once the meters read fresh
            # (accelerated, a meter is stale after half a real second, so a loaded machine can give a
            # fail-safe cycle at any moment, and did in CI at 20x: the page is given 5 s to show normal)
            WebDriverWait(manager, 5, poll_frequency=0.05).until(lambda d: _text(d, "mode") == "normal")
            shown = set(_companies_shown(manager))
            assert shown == {"alpha", "beta", "gamma"}
            # the page shows the park's power of a cycle just run; before the step the batteries
            # take the PV surplus (self-consumption: about 0 kW on the park's connection)
            shown_kw = float(_text(manager, "park-power"))
            service.poll()
            ran = service.cycles()
            assert min(abs(shown_kw - sum(c["grid_kw"])) for c in ran[-20:]) <= 0.15
            # after the batteries' first ramp, the cycles in normal mode (a fail-safe cycle stops the
            # batteries by design: docs/failsafe.md; a loaded machine gives some, accelerated)
            normal = [c for c in ran[10:] if c["mode"] == "normal"]
            print(f"{len(normal)} of {len(ran[10:])} settled cycles in normal mode")
            settled = sorted(abs(sum(c["grid_kw"])) for c in normal)
            assert len(settled) >= 20
            assert settled[len(settled) // 2] < 5.0  # the median cycle

            # the load step at the simulator: the page shows it within 2 s
            while float(park.request(op="status")["t_s"]) < STEP_T_S:
                time.sleep(0.02)
            stepped = time.monotonic()
            WebDriverWait(manager, 5, poll_frequency=0.05).until(
                lambda d: float(_text(d, "park-power")) > 20.0
            )
            seen_after_s = time.monotonic() - stepped
            print(f"the park page showed the load step {seen_after_s:.2f} s after the simulator made it")
            assert seen_after_s < 2.0
            # the quarter-hour in progress: its running mean (under the cap) against its mean cap
            assert -40.0 < float(_text(manager, "quarter-mean")) <= 150.0
            assert _text(manager, "quarter-import-cap") == "150.0"
            assert _text(manager, "quarter-verdict") == "within the caps"

            _statement_matches_the_report(manager, park.config_path, tmp_path)
            _company_sees_only_its_own(url)
            _metrics(url)

            shot = tmp_path / "park-page.png"
            assert manager.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"screenshot of the park page: {shot}")

            # the browser dies with its event stream open: control goes on, the page serves others
            for pid in _chromium_pids(manager):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # (at 10x a meter counts as stale after half a real second: a busy machine can
            # give a fail-safe cycle now and then, with or without a browser, so the modes are not
            # what is checked here; that the cycles go on and the page still answers is)
            cycles = _cycles_after(service, 40, timeout_s=10)
            assert len(cycles) >= 40
            assert service.proc.poll() is None
            assert _get(url + "api/state", MANAGER)[0] == 200
        service.proc.send_signal(signal.SIGTERM)
        _, err = service.proc.communicate(timeout=10)
        assert service.proc.returncode == 0, err.decode()
        journal = err.decode()
        assert journal.count("park page: wrong credentials from 127.0.0.1") == 1, journal  # three tried
        assert "Traceback" not in journal
    finally:
        service.close()
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.communicate()
        park.stop()


def _company_sees_only_its_own(url: str) -> None:
    """alpha's login: its row and statement only, in the browser and on every JSON endpoint."""
    with _browser() as alpha:
        _login(alpha, url, ALPHA)
        assert _companies_shown(alpha) == ["alpha"]
        assert not alpha.find_element(By.ID, "park-tile").is_displayed()
        assert not alpha.find_element(By.ID, "quarter-tile").is_displayed()
        assert _text(alpha, "who") == "company alpha"
        WebDriverWait(alpha, 10).until(_page_statements)
        assert set(_page_statements(alpha)) == {"alpha"}
        source = alpha.page_source
        assert "beta" not in source
        assert "gamma" not in source
    # the JSON endpoints with alpha's token
    status, body = _get(url + "api/state", ALPHA)
    assert status == 200
    state = json.loads(body)
    assert set(state["companies"]) == {"alpha"}
    assert "park" not in state
    assert "quarter" not in state
    assert all(d.startswith("alpha") for d in state["devices"]), state["devices"]
    assert "beta" not in body
    assert "gamma" not in body
    event = _first_event(url, ALPHA)
    assert set(event["companies"]) == {"alpha"}
    assert "park" not in event
    status, body = _get(url + "api/history", ALPHA)
    assert status == 200
    assert set(json.loads(body)["series"]) == {"company:alpha"}
    status, body = _get(url + f"api/statements/{MONTH}", ALPHA)
    assert status == 200
    month = json.loads(body)
    assert {s["company"] for s in month["statements"]} == {"alpha"}
    assert "kpis" not in month
    status, body = _get(url + f"api/statements/{MONTH}.csv", ALPHA)
    assert status == 200
    assert [r[1] for r in list(csv.reader(io.StringIO(body)))[1:]] == ["alpha"]
    assert _get(url + "metrics", ALPHA)[0] == 403
    # the manager's token opens more: the same endpoint shows every company
    assert set(json.loads(_get(url + "api/state", MANAGER)[1])["companies"]) == {"alpha", "beta", "gamma"}
    # wrong credentials: 401 every time (logged once: checked in the journal at the end)
    for _ in range(3):
        assert _get(url + "api/state", "not-a-token-of-anyone-here")[0] == 401
    assert _get(url + "api/state")[0] == 401
    assert _get(url + f"api/statements/{MONTH}")[0] == 401


def _statement_matches_the_report(manager: webdriver.Chrome, config: Path, tmp: Path) -> None:
    """The statements on the page and in its CSV are `hubctl report`'s for the same ledger.

    The ledger settles every 15 s of real time here; a settlement between the page's read and the
    report's shows as a difference, so the comparison is made again (at most 5 times) until the page
    read the same ledger before and after the report."""
    deadline = time.monotonic() + 30  # the first settlement of the run
    for attempt in range(5):
        while True:
            manager.refresh()
            WebDriverWait(manager, 10).until(lambda d: d.find_element(By.ID, "page").is_displayed())
            with contextlib.suppress(TimeoutException):
                WebDriverWait(manager, 2).until(lambda d: len(_page_statements(d)) == 3)
                break
            assert time.monotonic() < deadline, "no statements on the page within 30 s"
        Select(manager.find_element(By.ID, "month")).select_by_value(MONTH)
        before = _browser_csv(manager)
        shown = _page_statements(manager)
        report = _report_statements(config, tmp / f"report-{attempt}")
        after = _browser_csv(manager)
        if before == after:
            break
    else:
        pytest.fail("the ledger changed during every comparison")
    page_rows = list(csv.reader(io.StringIO(before)))
    assert page_rows == report  # the CSV download is the report's statements.csv, to the character
    assert len(report) == 4  # the header and three companies
    for row in report[1:]:
        cells = shown[row[1]]
        assert cells[0] == row[1]
        assert cells[1:7] == [f"{float(v):.1f}" for v in row[2:8]]
        assert cells[7:] == [f"{float(v):.2f}" for v in row[8:]]
    assert any(float(r[2]) > 0 for r in report[1:])  # energy was counted


def _metrics(url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    status, body = _get(url + "metrics", MANAGER)
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("hubctl_cycle_latency_seconds_count", ())] > 0
    assert samples[("hubctl_mode", (("mode", "normal"),))] == 1.0
    assert samples[("hubctl_mode", (("mode", "failsafe"),))] == 0.0
    assert samples[("hubctl_devices_up", ())] == samples[("hubctl_devices", ())] > 0
    assert samples[("hubctl_quarter_import_cap_kw", ())] == 150.0
    assert ("hubctl_spool_points", ()) in samples
    assert ("hubctl_spool_dropped_points_total", (("reason", "size"),)) in samples
    assert all(name.startswith("hubctl_") for name, _ in samples)


def test_control_goes_on_when_the_page_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    park = Park(tmp_path, PROFILES, battery_kw=(100, 40))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        _site(park, tmp_path, port)
        monkeypatch.setenv("HUBCTL_WEB_MANAGER_TOKEN", MANAGER)
        service = Service(tmp_path, park)
        try:
            service.wait_for("the first cycle", lambda r: r["kind"] == "cycle", timeout_s=20)
            assert len(_cycles_after(service, 60, timeout_s=15)) >= 60  # control goes on
            service.proc.send_signal(signal.SIGTERM)
            _, err = service.proc.communicate(timeout=10)
        finally:
            service.close()
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.communicate()
            park.stop()
    journal = err.decode()
    assert service.proc.returncode == 0, journal
    assert journal.count(f"park page: cannot listen on 127.0.0.1:{port}") == 1, journal
    assert "control goes on without the page" in journal
    assert "Traceback" not in journal


def test_a_company_row_stood_in_for_by_the_park_meter_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared connection whose gamma meter freezes: the page's gamma row shows the park meter's
    stand-in figure, marked, and the mark goes when the meter reads again."""
    park, service, url = _serve(tmp_path, monkeypatch, "--park-meter")
    try:
        _wait_http(url, service.proc)
        with _browser() as manager:
            _login(manager, url, MANAGER)

            def gamma_grid(d: webdriver.Chrome) -> str:
                """The gamma row's grid cell, read in one go (the page rebuilds its rows each update)."""
                script = (
                    "const c = document.querySelector('tr[data-company=gamma] td:nth-child(2)');"
                    "return c ? c.textContent : '';"
                )
                return str(d.execute_script(script))

            WebDriverWait(manager, 10).until(lambda d: gamma_grid(d) not in {"", "–"})
            assert "park meter" not in gamma_grid(manager)
            park.request(op="inject", device="gamma-grid", fault="frozen")
            WebDriverWait(manager, 20, poll_frequency=0.1).until(lambda d: "park meter" in gamma_grid(d))
            shown = gamma_grid(manager)
            assert shown.endswith(" (from the park meter)")
            # gamma's load, 30-31 kW, no PV; a stand-in is as good as the common load it subtracts
            # (followed within the 7.5 kW tolerance) and the meters' read moments
            assert abs(float(shown.split()[0]) - 30.5) < 7.5 + 3.0
            park.request(op="clear", device="gamma-grid")
            WebDriverWait(manager, 20, poll_frequency=0.1).until(lambda d: "park meter" not in gamma_grid(d))
    finally:
        service.close()
        if service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
            service.proc.communicate(timeout=10)
        park.stop()
