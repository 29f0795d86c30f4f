"""``writebus dashboard`` in a real browser, against real servers.

Two bus nodes (syd primary, lax replica) run on a prefix of their own; the dashboard runs as the
command users start (``python -m writebus dashboard --listen 127.0.0.1:0``) with lax's
environment; headless Chromium, driven by selenium, opens the URL it prints. Writes come from an
app in lax (:class:`writebus.Database`) on a thread of its own, so the browser is watched while
they happen. The last test saves a screenshot (``build/artifacts/dashboard.png``).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.stack import REPO, settings_for, start_bus
from writebus import Database

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: The screenshot artifact; WRITEBUS_DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's.
SCREENSHOT = REPO / os.environ.get("WRITEBUS_DASHBOARD_SCREENSHOT", "build/artifacts/dashboard.png")
LAX_LEGEND = '#lag-legend li[data-region="lax"]'



@pytest.fixture(autouse=True, scope="module")
def _browser_installed() -> None:
    """Chromium is a requirement of this module, not an option: fail, never skip."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs Debian's chromium and chromium-driver: `make test` installs them")

T = TypeVar("T")

# Every node of the page's table, by region: the raw value of each cell (data-value), its
# row state and role. Read in one script, because the page rebuilds the rows every second.
_ROWS_JS = """
const out = {};
for (const tr of document.querySelectorAll('#nodes tr[data-region]')) {
  const row = {state: tr.dataset.state, role: tr.dataset.role, text: {}};
  for (const td of tr.querySelectorAll('td[data-field]')) {
    row[td.dataset.field] = td.dataset.value;
    row.text[td.dataset.field] = td.textContent;
  }
  out[tr.dataset.region] = row;
}
return out;
"""


def _start_dashboard(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    """``python -m writebus dashboard`` on a free port, and the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "writebus", "dashboard", "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=30)
    if not ready:
        proc.kill()
        raise AssertionError(f"the dashboard printed no URL in 30 s:\n{log.read_text()}")
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), (url, log.read_text())
    return proc, url


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def prefix(stack: Any) -> Iterator[str]:
    """A prefix with its own syd and lax bus nodes (fresh counters, nobody else's traffic)."""
    name = f"dash{uuid.uuid4().hex[:8]}"
    procs = [
        start_bus(stack, r, log_name=f"bus-{name}-{r}", WRITEBUS_PREFIX=name)
        for r in ("syd", "lax")
    ]
    try:
        yield name
    finally:
        for p in procs:
            p.stop(10)


def _dashboard_env(stack: Any, prefix: str) -> dict[str, str]:
    return {**os.environ, **stack.env("lax"), "WRITEBUS_PREFIX": prefix}


@pytest.fixture(scope="module")
def dashboard_url(
    stack: Any, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of a running ``writebus dashboard`` watching ``prefix`` from lax."""
    log = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    proc, url = _start_dashboard(_dashboard_env(stack, prefix), log)
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, kept off the network (only loopback is reachable here)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1280,760",
        "--hide-scrollbars", "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser: webdriver.Chrome, dashboard_url: str) -> webdriver.Chrome:
    """The dashboard open in the browser, its stream live and both regions in the table."""
    browser.get(dashboard_url)
    _wait(browser, lambda d: _attr(d, "#connection", "data-state") == "live", "a live stream")
    _wait(browser, lambda d: {"syd", "lax"} <= set(_rows(d)), "both regions in the table", 20)
    return browser


def _rows(driver: webdriver.Chrome) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = driver.execute_script(_ROWS_JS)
    return rows


def _wait(
    driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], T], what: str, timeout: float = 15
) -> T:
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    return wait.until(check, message=f"timed out waiting for {what}")


def _attr(driver: webdriver.Chrome, css: str, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).get_attribute(name) or ""


def _assert_no_script_errors(driver: webdriver.Chrome) -> None:
    """Nothing logged at SEVERE in the browser's console since the last look: the page's
    script ran every update without an exception and fetched nothing that failed."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def _number(text: str | None) -> float:
    return float(text) if text else 0.0


class Writer:
    """An app in lax making a write every ``pace`` seconds on a thread of its own."""

    def __init__(
        self, stack: Any, prefix: str, table: str, *, await_replication: bool, pace: float = 0.05
    ) -> None:
        self.settings = settings_for(stack, "lax", prefix=prefix)
        self.table = table
        self.pace = pace
        #: False where the replica's replay will be paused: each write still commits, but a
        #: wait for lax to replay it would time out.
        self.await_replication = await_replication
        self.written = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard-writes", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self._error is None:
            return
        if isinstance(exc[1], BaseException):  # the wait that failed may be explained by this
            exc[1].add_note(f"the writer had stopped: {self._error!r}")
        else:
            raise AssertionError(f"a write failed: {self._error!r}") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by __exit__ on the test's thread
            self._error = exc

    async def _run(self) -> None:
        async with Database(self.settings) as db:
            while not self._stop.is_set():
                await db.execute(
                    f"INSERT INTO {self.table}(body) VALUES (%s)",
                    [f"w{self.written}"],
                    await_replication=self.await_replication,
                )
                self.written += 1
                await asyncio.sleep(self.pace)  # a steady rate of writes, not a wait for state


def test_the_command_prints_its_url_serves_the_page_and_stops_on_sigterm(
    stack: Any, prefix: str, tmp_path: Path
) -> None:
    """``writebus dashboard --listen 127.0.0.1:0`` prints the URL of a free port, serves the
    page there, and exits 0 on SIGTERM even with an event stream open."""
    proc, url = _start_dashboard(_dashboard_env(stack, prefix), tmp_path / "dashboard.log")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and 'id="writes-per-s"' in resp.read().decode()
        stream = urllib.request.urlopen(f"{url}events", timeout=5)
        assert stream.readline().startswith(b"retry: ")
    finally:
        code = _stop(proc)
    stream.close()
    assert code == 0, (tmp_path / "dashboard.log").read_text()


def test_both_regions_appear_and_the_numbers_move_with_writes(
    stack: Any, prefix: str, page: webdriver.Chrome, table: str
) -> None:
    """The table has syd (primary) and lax (replica); while an app in lax writes, the page's
    write throughput and syd's requests/s rise above 0 and the replay LSN shown for lax moves."""
    rows = _rows(page)
    assert rows["syd"]["role"] == "primary" and rows["lax"]["role"] == "replica"
    lax_lsn = rows["lax"]["lsn"]
    assert lax_lsn and rows["lax"]["text"]["lsn"] == lax_lsn
    with Writer(stack, prefix, table, await_replication=True) as writer:
        _wait(page, lambda d: _number(_attr(d, "#writes-per-s", "data-value")) > 0, "writes/s > 0")
        assert float(page.find_element(By.ID, "writes-per-s").text) > 0  # what a person reads
        _wait(page, lambda d: _number(_rows(d)["syd"]["requests_per_s"]) > 0, "syd's requests/s")
        _wait(page, lambda d: _rows(d)["lax"]["lsn"] != lax_lsn, "lax's replay LSN to move")
    assert writer.written > 0
    items = page.find_elements(By.CSS_SELECTOR, "#lag-legend li")
    legend = {li.get_attribute("data-region") for li in items}
    assert legend == {"syd", "lax"}
    _assert_no_script_errors(page)


def _background(driver: webdriver.Chrome, region: str) -> str:
    cell = driver.find_element(By.CSS_SELECTOR, f'#nodes tr[data-region="{region}"] td')
    return cell.value_of_css_property("background-color")


def _points(driver: webdriver.Chrome) -> float:
    return _number(_attr(driver, "#lag-chart", "data-points"))


def test_a_lagging_replica_is_highlighted_and_charted(
    stack: Any, prefix: str, page: webdriver.Chrome, table: str
) -> None:
    """With replay paused on lax's replica while writes go on, lax's row turns ``lagging`` and
    is drawn in another colour than syd's, and its legend shows the lag growing past 3 s; once
    replay resumes the row is ``ok`` again. The page is saved as docs/dashboard.png while lax
    lags, after at least 20 s of history, so the chart shows the quiet part and the climb."""
    with Writer(stack, prefix, table, await_replication=False):
        _wait(page, lambda d: _number(_rows(d)["syd"]["requests_per_s"]) > 0, "writes at syd")
        _wait(page, lambda d: _points(d) >= 20, "20 s of history", 30)
        with psycopg.connect(stack.replica.url, autocommit=True) as replica:
            replica.execute("SELECT pg_wal_replay_pause()")
            try:
                _wait(page, lambda d: _rows(d)["lax"]["state"] == "lagging", "lax to be lagging")
                row = page.find_element(By.CSS_SELECTOR, '#nodes tr[data-region="lax"]')
                assert "lagging" in (row.get_attribute("class") or "")
                assert _background(page, "lax") != _background(page, "syd")
                _wait(page, lambda d: _number(_attr(d, LAX_LEGEND, "data-value")) >= 3, "3 s lag")
                assert _rows(page)["syd"]["state"] == "ok"
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                assert page.save_screenshot(str(SCREENSHOT))
            finally:
                replica.execute("SELECT pg_wal_replay_resume()")
        _wait(page, lambda d: _rows(d)["lax"]["state"] == "ok", "lax to catch up", 20)
    assert _background(page, "lax") == _background(page, "syd")
    _assert_no_script_errors(page)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SCREENSHOT.stat().st_size > 10_000
