"""A Celery user's shop in a directory of its own, on the default SQLite file (issue 14, frictions 2 and 7).

The test writes the user's package to a temporary directory, starts ``conveyor worker dayshop.tasks:app``
there with no broker setting (the default ``sqlite:///conveyor.db``, relative), and then does what the
user did: a producer sends tasks declared in other modules, one of them in a module nobody includes,
and ``conveyor status`` is run from the parent directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import WorkerProcess, kill_leftovers

SHOP = {
    "dayshop/__init__.py": "",
    "dayshop/tasks.py": """
from conveyor import App

app = App("dayshop", include=["dayshop.billing"], autodiscover=["dayshop"])

@app.task
def charge(order_id: int) -> str:
    return f"charged {order_id}"
""",
    "dayshop/billing.py": """
from dayshop.tasks import app

@app.task
def invoice(order_id: int) -> str:
    return f"invoice {order_id}"
""",
    "dayshop/mail/__init__.py": "",
    "dayshop/mail/tasks.py": """
from dayshop.tasks import app

@app.task
def send(to: str) -> str:
    return f"sent to {to}"
""",
    "dayshop/orphan.py": """
from dayshop.tasks import app

@app.task
def forgotten() -> None: ...
""",
}

PRODUCER = """
from conveyor import TaskNotRegistered
from dayshop import billing, orphan
from dayshop.mail import tasks as mail
print(billing.invoice.delay(7).get(timeout=20))
print(mail.send.delay("ann@example.com").get(timeout=20))
try:
    orphan.forgotten.delay().get(timeout=20)
except TaskNotRegistered as exc:
    print("raised:", exc)
"""


class DayshopWorker(WorkerProcess):
    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:  # the user's directory, not the repo's
        self.log = log
        command = [sys.executable, "-m", "conveyor", "worker", "dayshop.tasks:app", "-c", "1"]
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def shop_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app-dir"
    for name, text in SHOP.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def user_env(shop_dir: Path) -> dict[str, str]:
    """No CONVEYOR_* variable at all: the default sqlite:///conveyor.db, as on day one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, "PYTHONPATH": str(shop_dir), "COLUMNS": "200"}


@pytest.fixture
def worker(user_env: dict[str, str], shop_dir: Path, tmp_path: Path) -> Iterator[DayshopWorker]:
    process = DayshopWorker(user_env, shop_dir, tmp_path / "worker.log")
    try:
        process.wait_for_log("registered", timeout=30)
        yield process
    finally:
        kill_leftovers([process])


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_included_and_discovered_tasks_run_and_an_unknown_one_fails_visibly(
    worker: DayshopWorker, user_env: dict[str, str], shop_dir: Path
) -> None:
    # The banner names the absolute database file and every task the worker knows.
    assert f"broker sqlite:///{shop_dir}/conveyor.db" in worker.output()
    registered = "3 task(s) registered: dayshop.billing.invoice, dayshop.mail.tasks.send, dayshop.tasks.charge"
    assert registered in worker.output()

    produced = run(user_env, shop_dir, "-c", PRODUCER)
    assert produced.returncode == 0, produced.stderr
    lines = produced.stdout.splitlines()
    assert lines[:2] == ["invoice 7", "sent to ann@example.com"]
    # The task nobody imports is a final FAILURE its producer sees at once, with the fix, not PENDING forever.
    assert lines[2].startswith("raised: task 'dayshop.orphan.forgotten' is not registered on app 'dayshop'")
    assert "include=['dayshop.orphan']" in lines[2] and "conveyor dlq requeue" in lines[2]

    listed = run(user_env, shop_dir, "-m", "conveyor", "tasks", "dayshop.tasks:app")
    assert listed.returncode == 0, listed.stderr
    for name in ("dayshop.billing.invoice", "dayshop.mail.tasks.send", "dayshop.tasks.charge"):
        assert name in listed.stdout
    assert "dayshop.orphan.forgotten" not in listed.stdout

    dead = run(user_env, shop_dir, "-m", "conveyor", "dlq", "list", "dayshop.tasks:app")
    assert "not registered" in dead.stdout


def test_status_from_another_directory_refuses_instead_of_creating_an_empty_database(
    worker: DayshopWorker, user_env: dict[str, str], shop_dir: Path
) -> None:
    elsewhere = shop_dir.parent
    app = "dayshop.tasks:app"
    for args in (["status", app], ["result", app, "deadbeef"], ["dlq", "list", app], ["revoke", app, "deadbeef"]):
        done = run(user_env, elsewhere, "-m", "conveyor", *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(f"Error: no SQLite database at {elsewhere}/conveyor.db"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (elsewhere / "conveyor.db").exists()

    here = run(user_env, shop_dir, "-m", "conveyor", "status", "dayshop.tasks:app")
    assert here.returncode == 0, here.stderr
    assert "live workers: 1" in here.stdout


def test_an_include_that_does_not_import_is_one_line_and_exit_2(user_env: dict[str, str], shop_dir: Path) -> None:
    tasks = shop_dir / "dayshop" / "tasks.py"
    tasks.write_text(tasks.read_text().replace('include=["dayshop.billing"]', 'include=["dayshop.billng"]'))
    done = run(user_env, shop_dir, "-m", "conveyor", "worker", "dayshop.tasks:app", "-c", "1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: include: cannot import module 'dayshop.billng': No module named 'dayshop.billng'"
    )
