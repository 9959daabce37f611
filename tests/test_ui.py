"""`cano ui` (extra cano[ui]): the pages driven in a real browser, the JSON API, and what the
server refuses.

The browser is Debian's chromium with its chromedriver, headless (`apt-get install chromium
chromium-driver`; `.ci/run` installs them and sets CANO_REQUIRE_BROWSER=1). Without them the
browser tests skip, unless CANO_REQUIRE_BROWSER is set: then they fail.
CANO_UI_SCREENSHOTS=DIR saves the screenshots the README and docs show.

Runs are made by a real Worker on a SQLite file (in a thread of this process) and shown by
`cano ui` in another process, as a user would run it; a redb store is shown by the worker
that holds it (`Worker(ui=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cano
import pytest
from cano import RunStatus

pytest.importorskip("starlette", reason="cano ui needs the ui extra: pip install -e '.[ui]'")
pytest.importorskip("uvicorn", reason="cano ui needs the ui extra: pip install -e '.[ui]'")

import ui_flows
from cano.ui import UiServer, check_host

T = TypeVar("T")
TESTS = Path(__file__).parent
CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0


# ----- plumbing ----------------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread: the worker runs there while the test drives the browser."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def eventually(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_cli_ui(store: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`cano ui --store STORE --port 0 …` in another process; its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cano", "ui", "--store", str(store), "--port", "0", *extra],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("cano ui: http://"):
        proc.kill()
        raise AssertionError(f"cano ui did not start: {line!r} {proc.communicate()[1]}")
    return proc, line.split()[2]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def http(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# ----- the runs a user would see ----------------------------------------------------------


class Site:
    """A SQLite store with runs of every status, a worker serving them, and `cano ui`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = LoopThread()
        self.store = cano.SqliteCheckpointStore(path)
        self.client = cano.Client(self.store)
        self.worker = cano.Worker(
            self.store, ui_flows.flows(), concurrency=8, lease=2, poll_interval=0.1
        )
        self.loop.run(self._start())
        self.ui, self.url = start_cli_ui(path, "--app", "ui_flows:flows")

    async def _start(self) -> None:
        self.worker.start()

    def enqueue(self, name: str, initial: Any, run_id: str, **kwargs: Any) -> None:
        self.loop.run(self.client.enqueue(name, initial, workflow_id=run_id, **kwargs))

    def status(self, run_id: str) -> RunStatus | None:
        info = self.loop.run(self.client.get(run_id))
        return None if info is None else info.status

    def reaches(self, run_id: str, status: RunStatus) -> None:
        eventually(lambda: self.status(run_id) is status, f"{run_id} to be {status.name}")

    def close(self) -> None:
        stop(self.ui)
        self.loop.run(self.worker.stop(grace=0), timeout=30)
        self.loop.run(self._close_store())
        self.loop.close()

    async def _close_store(self) -> None:
        self.store.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    made = Site(tmp_path_factory.mktemp("ui") / "runs.db")
    try:
        made.enqueue("checked", "WORK", "ok-1", input={"fail": False})
        made.enqueue("checked", "WORK", "broken-1", input={"fail": True})
        made.enqueue("hostile", ui_flows.HOSTILE_STATE, "hostile-1")
        made.enqueue("slow", "WORK", "slow-1")
        made.enqueue("orders", "PLACE", "order-1")
        made.enqueue("checked", "WORK", "later-1", queue="nobody-serves-this")
        made.enqueue("checked", "WORK", "dropped-1", queue="nobody-serves-this")
        made.loop.run(made.client.cancel("dropped-1"))
        made.reaches("ok-1", RunStatus.COMPLETED)
        made.reaches("broken-1", RunStatus.FAILED)
        made.reaches("hostile-1", RunStatus.FAILED)
        made.reaches("slow-1", RunStatus.RUNNING)
        made.reaches("order-1", RunStatus.WAITING)
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CANO_REQUIRE_BROWSER"):
            pytest.fail("CANO_REQUIRE_BROWSER: no chromium or chromedriver on PATH")
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> None:
    where = os.environ.get("CANO_UI_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 140, 2400))
        driver.save_screenshot(str(Path(where) / name))
        driver.set_window_size(1280, 1000)


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def row_statuses(driver: Any) -> dict[str, str]:
    """The list's rows, read in one go (the page may reload itself meanwhile)."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.run'), "
        "r => [r.dataset.id, r.dataset.status])"
    )
    return dict(rows)


# ----- in the browser -----------------------------------------------------------------------


def test_the_runs_list_shows_runs_of_every_status_newest_first(site: Site, browser: Any) -> None:
    browser.get(site.url)
    shown = row_statuses(browser)
    assert {
        "ok-1": "COMPLETED",
        "broken-1": "FAILED",
        "slow-1": "RUNNING",
        "order-1": "WAITING",
        "later-1": "PENDING",
        "dropped-1": "CANCELLED",
    }.items() <= shown.items()
    order = list(shown)
    assert order.index("dropped-1") < order.index("ok-1")  # newest first
    screenshot(browser, "ui-runs.png")

    # Filters: by status, and by workflow name.
    browser.get(site.url + "?status=FAILED")
    assert set(row_statuses(browser).values()) == {"FAILED"}
    browser.get(site.url + "?name=orders")
    assert list(row_statuses(browser)) == ["order-1"]


def test_the_list_refreshes_itself(site: Site, browser: Any) -> None:
    browser.get(site.url + "?name=checked")
    assert "fresh-1" not in row_statuses(browser)
    site.enqueue("checked", "WORK", "fresh-1", input={"fail": False})
    eventually(lambda: "fresh-1" in row_statuses(browser), "the list to show a new run")


def test_a_failed_run_shows_its_error_timeline_and_where_it_failed(
    site: Site, browser: Any
) -> None:
    browser.get(site.url + "runs/broken-1")
    assert by_css(browser, "#status").text == "FAILED"
    assert by_css(browser, "#error-type").text == "TaskError"
    assert "ValueError: the parcel weighs -3 kg" in by_css(browser, "#error-text").text
    states = [cell.text for cell in all_css(browser, "#steps tr.step td.state")]
    assert states == ["WORK", "CHECK"]
    bars = all_css(browser, "#steps .bar")
    assert len(bars) == 2 and all(bar.size["width"] > 0 for bar in bars)
    # The graph is drawn in the page (vendored mermaid), the failing state marked.
    eventually(lambda: browser.execute_script("return document.body.dataset.graph"), "graph")
    assert browser.execute_script("return document.body.dataset.graph") == "drawn"
    failed = all_css(browser, "#graph svg g.failed")
    assert len(failed) == 1 and "CHECK" in failed[0].text
    screenshot(browser, "ui-run.png")


def test_store_values_are_shown_escaped(site: Site, browser: Any) -> None:
    # Straight to the run's page: a list page left open reloads itself every few seconds, and
    # a reload that fires as the next page is asked for can win the race.
    browser.get(site.url + "runs/hostile-1")
    assert ui_flows.HOSTILE_ERROR in shown(browser, "#error-text").text
    assert by_css(browser, "#state").text == ui_flows.HOSTILE_STATE
    eventually(lambda: browser.execute_script("return document.body.dataset.graph"), "graph")
    assert browser.execute_script("return window.__pwned === undefined")
    assert all_css(browser, "img") == []  # neither the page nor the graph made one
    browser.get(site.url + "?name=hostile")
    assert ui_flows.HOSTILE_STATE in by_css(browser, "tr.run td.state").text
    assert browser.execute_script("return window.__pwned === undefined")


def shown(driver: Any, selector: str) -> Any:
    """The element, once the page that has it is loaded."""
    return eventually(lambda: (all_css(driver, selector) or [None])[0], selector)


def confirm(driver: Any, question: str) -> str:
    """The action's page asks first; say yes. What the page then says."""
    assert question in shown(driver, "#question").text
    by_css(driver, "#confirm").click()
    return str(shown(driver, "#done").text)


def test_cancel_from_the_page_cancels_a_running_run(site: Site, browser: Any) -> None:
    browser.get(site.url + "runs/slow-1")
    assert by_css(browser, "#status").text == "RUNNING"
    by_css(browser, "#cancel").click()
    assert site.status("slow-1") is RunStatus.RUNNING  # it asks first
    assert "slow-1" in confirm(browser, "Cancel run slow-1?")
    site.reaches("slow-1", RunStatus.CANCELLED)
    browser.get(site.url + "runs/slow-1")
    assert by_css(browser, "#status").text == "CANCELLED"


def test_a_signal_from_the_page_wakes_a_waiting_run(site: Site, browser: Any) -> None:
    browser.get(site.url + "runs/order-1")
    assert "signal approval" in by_css(browser, "#waiting-for").text
    by_css(browser, "#signal-payload").send_keys('{"approved": true}')
    by_css(browser, "#signal").click()
    assert "sent" in confirm(browser, "Send signal 'approval'")
    site.reaches("order-1", RunStatus.COMPLETED)
    info = site.loop.run(site.client.get("order-1"))
    assert info is not None and info.final_state == "SHIPPED"


def test_prune_from_the_page_asks_then_deletes(site: Site, browser: Any) -> None:
    browser.get(site.url)
    box = by_css(browser, "form.prune input[name=older_than]")
    box.clear()
    box.send_keys("1000d")
    by_css(browser, "form.prune button").click()
    assert confirm(browser, "Delete every ended run") == "Deleted 0 runs."  # none is that old
    assert site.status("ok-1") is RunStatus.COMPLETED


def test_a_redb_store_is_shown_by_the_worker_that_holds_it(tmp_path: Path, browser: Any) -> None:
    async def scenario() -> None:
        async with cano.RedbCheckpointStore(tmp_path / "runs.redb") as store:
            client = cano.Client(store)
            flows = ui_flows.flows()
            async with cano.Worker(store, flows, lease=2, poll_interval=0.1, ui=0) as worker:
                url = worker.ui_url
                assert url is not None and url.startswith("http://127.0.0.1:")
                await client.enqueue("orders", "PLACE", workflow_id="order-9")
                while (await client.get("order-9")).status is not RunStatus.WAITING:  # type: ignore[union-attr]
                    await asyncio.sleep(0.05)
                # The file is held by this process: `cano ui` elsewhere says where to look.
                held = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "cano", "ui", "--store", str(tmp_path / "runs.redb")],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert held.returncode == 1 and "Worker(store, workflows, ui=8765)" in held.stderr

                def in_browser() -> None:
                    browser.get(url + "runs/order-9")
                    assert by_css(browser, "#status").text == "WAITING"
                    by_css(browser, "#signal-payload").send_keys('{"approved": false}')
                    by_css(browser, "#signal").click()
                    confirm(browser, "Send signal 'approval'")

                await asyncio.to_thread(in_browser)
                info = await client.wait("order-9", timeout=WAIT)
                assert info.final_state == "REJECTED"
            assert worker.ui_url is None

    asyncio.run(scenario())


# ----- over HTTP ------------------------------------------------------------------------------


def test_the_json_api_answers_records_and_steps(site: Site) -> None:
    status, headers, body = http(site.url + "api/runs?status=FAILED&name=checked")
    assert status == 200 and headers["content-type"] == "application/json"
    runs = json.loads(body)
    assert [r["workflow_id"] for r in runs] == ["broken-1"]
    assert runs[0]["error_type"] == "TaskError" and runs[0]["state"] == "CHECK"
    status, _, body = http(site.url + "api/runs/broken-1")
    assert status == 200 and json.loads(body)["status"] == "FAILED"
    status, _, body = http(site.url + "api/runs/broken-1/steps")
    assert [s["state"] for s in json.loads(body)] == ["WORK", "CHECK"]
    assert http(site.url + "api/runs/no-such-run")[0] == 404
    assert http(site.url + "api/runs/no-such-run/steps")[0] == 404
    status, _, body = http(site.url + "api/runs?status=SLEEPY")
    assert status == 400 and "SLEEPY" in json.loads(body)["error"]


def test_no_action_is_a_get_and_forms_need_this_servers_secret(site: Site) -> None:
    assert http(site.url + "runs/later-1/cancel")[0] in (404, 405)
    assert http(site.url + "api/runs/later-1/cancel")[0] in (404, 405)
    # A form posted from elsewhere lacks the page's secret.
    status, _, body = http(
        site.url + "runs/later-1/cancel",
        method="POST",
        body=b"confirmed=yes",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403 and b"stale" in body
    # The API's actions take JSON only (a cross-site form cannot send it).
    status, _, _ = http(
        site.url + "api/runs/later-1/cancel",
        method="POST",
        body=b"{}",
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415
    assert site.status("later-1") is RunStatus.PENDING
    # A request naming another host (DNS rebinding) is refused.
    assert http(site.url, headers={"Host": "attacker.example"})[0] == 400


def test_the_api_acts_on_json(site: Site) -> None:
    site.enqueue("checked", "WORK", "api-1", queue="nobody-serves-this")
    status, _, body = http(
        site.url + "api/runs/api-1/cancel",
        method="POST",
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(body)["ok"] is True
    assert site.status("api-1") is RunStatus.CANCELLED
    status, _, body = http(
        site.url + "api/runs/api-1/signal",
        method="POST",
        body=json.dumps({"name": "approval", "payload": {"approved": True}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and "has ended (CANCELLED)" in json.loads(body)["error"]


def test_pages_carry_a_content_security_policy(site: Site) -> None:
    status, headers, _ = http(site.url)
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_a_non_loopback_address_needs_allow_remote_and_a_token() -> None:
    assert "127.0.0.1" in check_host("127.0.0.1", allow_remote=False, token=None)
    assert check_host("::1", allow_remote=False, token=None)
    with pytest.raises(cano.ConfigurationError, match="--allow-remote"):
        check_host("0.0.0.0", allow_remote=False, token=None)
    with pytest.raises(cano.ConfigurationError, match="CANO_UI_TOKEN"):
        check_host("0.0.0.0", allow_remote=True, token=None)
    with pytest.raises(cano.ConfigurationError, match="at least 16"):
        check_host("0.0.0.0", allow_remote=True, token="short")
    assert check_host("0.0.0.0", allow_remote=True, token="x" * 16) == ["*"]
    refused = subprocess.run(
        [sys.executable, "-m", "cano", "ui", "--store", "x.db", "--host", "0.0.0.0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CANO_UI_TOKEN": ""},
    )
    assert refused.returncode == 1 and "--allow-remote" in refused.stderr


def test_with_a_token_every_request_must_carry_it(tmp_path: Path) -> None:
    token = "t0ken-for-this-test-only"

    async def scenario() -> None:
        store = cano.InMemoryCheckpointStore()
        server = UiServer(store, port=0, token=token)
        server.start()
        try:
            url = server.url
            assert (await asyncio.to_thread(http, url))[0] == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await asyncio.to_thread(http, url + "api/runs", headers=wrong))[0] == 401
            right = {"Authorization": f"Bearer {token}"}
            status, _, body = await asyncio.to_thread(http, url + "api/runs", headers=right)
            assert status == 200 and json.loads(body) == []
            # ?token= once: a cookie, and the same page without the token in its address.
            status, headers, _ = await asyncio.to_thread(
                http, url + f"?status=FAILED&token={token}"
            )
            assert status == 303 and headers["location"] == "/?status=FAILED"
            cookie = headers["set-cookie"].split(";")[0]
            assert "httponly" in headers["set-cookie"].lower()
            status, _, _ = await asyncio.to_thread(http, url, headers={"Cookie": cookie})
            assert status == 200
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_taken_port_is_a_clear_error() -> None:
    async def scenario() -> None:
        first = UiServer(cano.InMemoryCheckpointStore(), port=0)
        first.listen()
        port = int(first.url.rsplit(":", 1)[1].strip("/"))
        try:
            second = UiServer(cano.InMemoryCheckpointStore(), port=port)
            with pytest.raises(cano.ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
                second.listen()
        finally:
            await first.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "redb", "postgres"])
def test_every_store_is_served(kind: str, tmp_path: Path) -> None:
    """The same pages over the other stores (SQLite is the `site` above)."""
    from pg_server import postgres_store

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if kind == "postgres":
                store: Any = await stack.enter_async_context(postgres_store())
            elif kind == "redb":
                store = await stack.enter_async_context(
                    cano.RedbCheckpointStore(tmp_path / "runs.redb")
                )
            else:
                store = cano.InMemoryCheckpointStore()
            client = cano.Client(store)
            await client.enqueue("checked", "WORK", workflow_id="queued-1", input={"n": 1})
            server = UiServer(store, workflows=ui_flows.flows(), port=0)
            server.start()
            try:
                status, _, body = await asyncio.to_thread(http, server.url + "api/runs")
                assert status == 200
                assert [(r["workflow_id"], r["status"]) for r in json.loads(body)] == [
                    ("queued-1", "PENDING")
                ]
                status, _, page = await asyncio.to_thread(http, server.url + "runs/queued-1")
                assert status == 200 and b'class="mermaid"' in page
                csrf = page.split(b'name="csrf" value="')[1].split(b'"')[0]
                form = b"confirmed=yes&csrf=" + csrf
                status, _, done = await asyncio.to_thread(
                    http, server.url + "runs/queued-1/cancel", method="POST", body=form
                )
                assert status == 200 and b"is cancelled" in done
                info = await client.get("queued-1")
                assert info is not None and info.status is RunStatus.CANCELLED
                # Prune: the cancelled run has ended, so an age of 0 s takes it.
                status, _, done = await asyncio.to_thread(
                    http,
                    server.url + "actions/prune",
                    method="POST",
                    body=b"confirmed=yes&older_than=0s&csrf=" + csrf,
                )
                assert status == 200 and b"Deleted 1 run." in done
                assert await client.get("queued-1") is None
            finally:
                await server.stop()

    asyncio.run(scenario())


def test_a_store_that_cannot_answer_is_a_page_saying_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = cano.SqliteCheckpointStore(tmp_path / "gone.db")
        server = UiServer(store, port=0)
        server.start()
        store.close()  # as if its disk went away under the page
        try:
            status, _, page = await asyncio.to_thread(http, server.url)
            assert status == 503 and b"the store could not answer" in page
            assert b"is closed" in page
            status, _, body = await asyncio.to_thread(http, server.url + "api/runs")
            assert status == 503 and "is closed" in json.loads(body)["error"]
        finally:
            await server.stop()

    asyncio.run(scenario())
