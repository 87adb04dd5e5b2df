"""The dashboard in a real browser (Playwright driving Debian's chromium) over a real worker on Redis.

Load the page and see a finished task appear, requeue a dead letter with a click and see it run again,
pause a queue with a click and see the worker stop taking from it (then resume it). ``SCREENSHOT_TO=path``
saves the overview's screenshot there (docs/dashboard.png is made so).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conveyor import App, State, eventlog
from tests.apps.e2e_app import runs_of
from tests.conftest import IN_CI, wait_until
from tests.e2e.conftest import ROOT, WorkerProcess, enqueue
from tests.servers import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def dashboard_url(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A ``conveyor dashboard`` process on a free port, stopped at the end."""
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    command = [sys.executable, "-m", "conveyor", "dashboard", "tests.apps.e2e_app:app", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=e2e_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "/api/queues", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(answers, 30, f"the dashboard to answer:\n{(tmp_path / 'dashboard.log').read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def page(dashboard_url: str) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 800})
            tab.set_default_timeout(10_000)
            yield tab
        finally:
            browser.close()


def _failures(app: App, task_id: str) -> int:
    return sum(1 for e in eventlog.read(app.backend, None)[0] if e.kind == "task-failed" and e.id == task_id)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("e2e_env", ["redis"], indirect=True)
def test_the_dashboard_in_a_browser(
    e2e_app: App, start_worker: Callable[..., WorkerProcess], records: Path, dashboard_url: str, page: Page
) -> None:
    expect = playwright_api.expect
    tab = page
    start_worker("-c", "2")
    tab.goto(dashboard_url + "/")
    expect(tab.locator("#feed")).to_be_visible()

    # A new task appears in the overview's feed within 2 s of finishing
    done = enqueue(e2e_app, "record", "seen")
    assert done.get(timeout=20) == "seen"
    expect(tab.locator("#feed")).to_contain_text(done.id, timeout=2_000)
    if os.environ.get("SCREENSHOT_TO"):
        expect(tab.locator("#feed")).to_contain_text("task-succeeded", timeout=5_000)
        tab.screenshot(path=os.environ["SCREENSHOT_TO"], full_page=True)

    # A dead letter, requeued with a click, runs again (and, doomed, dies again)
    dead = enqueue(e2e_app, "doomed", "d1")
    wait_until(lambda: dead.state is State.FAILURE and _failures(e2e_app, dead.id) == 1, 20, "the dead letter")
    tab.goto(dashboard_url + "/dead")
    row = tab.locator("tr", has_text=dead.id)
    expect(row).to_be_visible()
    row.locator("input[type=checkbox]").check()
    tab.locator("#requeue").click()
    wait_until(lambda: _failures(e2e_app, dead.id) == 2, 20, "the requeued dead letter to run again")

    # Paused with a click, the queue keeps its new task; resumed, the worker runs it
    tab.goto(dashboard_url + "/queues")
    tab.locator("tr", has_text="default").get_by_role("button", name="Pause").click()
    expect(tab.locator("tr", has_text="default")).to_contain_text("paused")
    tab.wait_for_timeout(3_000)  # a worker child re-reads the flags every second
    held = enqueue(e2e_app, "record", "held")
    tab.wait_for_timeout(2_000)
    assert runs_of(records, "held") == 0 and held.state is State.PENDING
    tab.locator("tr", has_text="default").get_by_role("button", name="Resume").click()
    expect(tab.locator("tr", has_text="default")).to_contain_text("serving")
    assert held.get(timeout=15) == "held"
