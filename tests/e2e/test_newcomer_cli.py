"""The command line as a Celery user met it on day one (issue 14, frictions 8, 9 and 14).

Each test runs ``python -m conveyor ...`` as a user types it, on a real broker:

- a configuration mistake is one ``Error:`` line and exit status 2 on every command; a broker that
  does not answer is one line and exit status 1; ``--loglevel bogus`` is a usage error;
- the broker password shows nowhere: ``conveyor status``, ``repr(app)``, the worker's banner;
- ``conveyor result ID`` shows state, progress, result or error; ``conveyor purge`` of an unknown
  queue warns.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conveyor import App
from tests.apps import newcomer_app
from tests.conftest import AMQP_URL, wait_until
from tests.e2e.conftest import ROOT
from tests.e2e.newcomer import ShopWorker, cli, shop, shop_env, shop_worker

__all__ = ["shop", "shop_env", "shop_worker"]  # fixtures

APP = "tests.apps.newcomer_app:app"
#: Every subcommand, with arguments that would be valid if the configuration were.
COMMANDS = [
    ["worker", APP, "-c", "1"],
    ["beat", APP],
    ["status", APP],
    ["enqueue", APP, "tests.apps.newcomer_app.resize", "--args", '["a.png"]'],
    ["purge", APP, "default", "--yes"],
    ["revoke", APP, "deadbeef"],
    ["result", APP, "deadbeef"],
    ["dlq", "list", APP],
    ["dlq", "show", APP, "deadbeef"],
    ["dlq", "requeue", APP, "--all"],
    ["dlq", "purge", APP, "--yes"],
    ["db", "migrate", APP],
]


def clean_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The test process's environment without any CONVEYOR_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path / 'c.db'}", **variables}


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *expected: str) -> str:
    """The command failed with ``status`` and one ``Error:`` line on stderr (no traceback) containing ``expected``."""
    assert done.returncode == status, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]) if c[0] in {"dlq", "db"} else c[0])
def test_a_misspelt_variable_is_one_line_and_status_2_on_every_command(command: list[str], tmp_path: Path) -> None:
    # Given the variable name typed wrong (CONVEYOR_BROKER_ULR), as the user did
    env = clean_env(tmp_path, CONVEYOR_BROKER_ULR="redis://127.0.0.1:6379/0")
    # Then every command says so in one line, with the settings that exist, and exits 2
    assert_one_line(cli(env, *command), 2, "unknown environment variable CONVEYOR_BROKER_ULR", "CONVEYOR_BROKER_URL")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [COMMANDS[0], COMMANDS[2], COMMANDS[6]], ids=["worker", "status", "result"])
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CONVEYOR_CONCURRENCY": "four"}, "CONVEYOR_CONCURRENCY='four' is not a valid int"),
        ({"CONVEYOR_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:5672/"}, "RabbitMQ is no result store"),
        ({"CONVEYOR_LEASE": "-1"}, "lease"),
    ],
    ids=["not-an-int", "amqp-without-backend", "bad-value"],
)
def test_a_configuration_mistake_is_one_line_and_status_2(
    command: list[str], variables: dict[str, str], expected: str, tmp_path: Path
) -> None:
    line = assert_one_line(cli(clean_env(tmp_path, **variables), *command), 2, expected)
    assert "s3cret" not in line


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "command",
    [COMMANDS[0], COMMANDS[1], COMMANDS[2], COMMANDS[6], COMMANDS[7]],
    ids=["worker", "beat", "status", "result", "dlq list"],
)
def test_an_unknown_scheme_is_one_line_and_status_2_without_the_password(command: list[str], tmp_path: Path) -> None:
    env = clean_env(tmp_path, CONVEYOR_BROKER_URL="kafka://shop:s3cret@127.0.0.1:9092/")
    line = assert_one_line(cli(env, *command), 2, "'kafka://shop:***@127.0.0.1:9092/'")
    assert "s3cret" not in line


@pytest.mark.timeout(120)
def test_status_against_a_dead_redis_is_one_line_and_status_1(tmp_path: Path) -> None:
    # Given a broker URL where no Redis listens (with a password in it)
    env = clean_env(tmp_path, CONVEYOR_BROKER_URL="redis://:s3cret@127.0.0.1:1/0")
    # Then status fails after its bounded retry, in one line, without the password
    assert_one_line(cli(env, "status", APP), 1, "redis://:***@127.0.0.1:1/0 did not answer")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["status", APP], ["db", "migrate", APP]], ids=["status", "db migrate"])
def test_a_dead_postgres_is_one_line_and_status_1(command: list[str], tmp_path: Path) -> None:
    # Given a PostgreSQL URL where no server listens (with a password in it)
    env = clean_env(tmp_path, CONVEYOR_BROKER_URL="postgresql://app:s3cret@127.0.0.1:1/shop")
    # Then the command fails in one line naming the server, without the password
    line = assert_one_line(cli(env, *command), 1, "PostgreSQL postgresql://app:***@127.0.0.1:1/shop", "refused")
    assert "s3cret" not in line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["worker", APP], ["beat", APP]], ids=["worker", "beat"])
def test_a_bogus_loglevel_is_a_usage_error_naming_the_choices(command: list[str], tmp_path: Path) -> None:
    done = cli(clean_env(tmp_path), *command, "--loglevel", "bogus")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '-l' / '--loglevel': 'bogus' is not one of 'debug', 'info', 'warning', 'error'."
    )


@pytest.mark.timeout(60)
def test_traceback_flag_shows_the_traceback(tmp_path: Path) -> None:
    done = cli(clean_env(tmp_path, CONVEYOR_CONCURRENCY="four"), "--traceback", "status", APP)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("conveyor.errors.ConfigurationError: CONVEYOR_CONCURRENCY")


# -- friction 9: the password -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_broker_password_shows_nowhere(amqp_test_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the user's RabbitMQ URL with guest's password, and a SQLite backend
    url = amqp_test_url
    password = AMQP_URL.split("@")[0].rsplit(":", 1)[1]
    assert f":{password}@" in url
    env = clean_env(tmp_path, CONVEYOR_BROKER_URL=url, CONVEYOR_BACKEND_URL=f"sqlite:///{tmp_path / 'r.db'}")
    # When they look at a worker's banner, at status (once the worker made the backend's file: status
    # refuses a SQLite file that does not exist), and at the app and its settings
    monkeypatch.setenv("CONVEYOR_BROKER_URL", url)
    monkeypatch.setenv("CONVEYOR_BACKEND_URL", env["CONVEYOR_BACKEND_URL"])
    app = App("shop")
    worker = ShopWorker(env, ["-c", "1"], tmp_path / "worker.log")
    try:
        worker.wait_for_log("ready", timeout=30)
        done = cli(env, "status", APP)
        assert done.returncode == 0, done.stderr
        assert worker.stop() == 0
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
    # Then the password is masked in each
    for shown in (done.stdout, repr(app), repr(app.settings), worker.output()):
        assert f":{password}@" not in shown, shown
        assert ":***@127.0.0.1" in shown, shown


# -- friction 14: conveyor result, conveyor purge -----------------------------------------------


@pytest.mark.timeout(90)
def test_result_shows_progress_then_the_result_or_the_error(
    shop_worker: ShopWorker, shop: App, shop_env: dict[str, str]
) -> None:
    # Given a task that reports 50 % and then works for a while
    running = newcomer_app.resize.delay("cat.png", 10.0)  # long enough for a CLI start on a loaded machine
    wait_until(lambda: running.progress == 0.5, 20, "the task to report its progress")
    # When the user asks for it by id
    shown = cli(shop_env, "result", APP, running.id)
    # Then they see its state, progress and note
    assert shown.returncode == 0, shown.stderr
    assert (
        "state:    STARTED" in shown.stdout
        and "progress: 50%" in shown.stdout
        and "note:     half done" in shown.stdout
    )
    # And, waiting for it, its result
    done = cli(shop_env, "result", APP, running.id, "--wait", "30")
    assert done.returncode == 0, done.stderr
    assert 'result:   "resized cat.png"' in done.stdout and "state:    SUCCESS" in done.stdout
    # And for a failed task, the error, and with -t the worker's traceback
    failed = newcomer_app.charge.delay(3, -1)
    shown = cli(shop_env, "result", APP, failed.id, "--wait", "20", "-t")
    assert shown.returncode == 0, shown.stderr
    assert "error:    ValueError: negative amount -1 for order 3" in shown.stdout
    assert 'raise ValueError(f"negative amount' in shown.stdout
    # And --json gives the stored record
    record = json.loads(cli(shop_env, "result", APP, failed.id, "--json").stdout)
    assert (record["id"], record["state"], record["error"]["type"]) == (failed.id, "FAILURE", "ValueError")


@pytest.mark.timeout(60)
def test_result_of_an_unknown_id_is_pending_and_waiting_for_it_is_status_1(shop: App, shop_env: dict[str, str]) -> None:
    shown = cli(shop_env, "result", APP, "deadbeef")
    assert shown.returncode == 0 and "state:    PENDING (nothing recorded" in shown.stdout
    assert_one_line(cli(shop_env, "result", APP, "deadbeef", "--wait", "0.5"), 1, "did not finish within 0.5 s")


@pytest.mark.timeout(60)
def test_purging_an_unknown_queue_warns(shop: App, shop_env: dict[str, str]) -> None:
    # Given one task waiting in the default queue
    newcomer_app.resize.delay("a.png")
    # When the user purges a misspelt queue
    typo = cli(shop_env, "purge", APP, "defualt", "--yes")
    # Then they are warned, and the task is still there
    assert typo.returncode == 0, typo.stderr
    assert "Warning: no queue 'defualt' is known to app 'newcomer'" in typo.stderr and "known: default" in typo.stderr
    assert sum(q.ready for q in shop.broker.stats()) == 1
    # And the right name purges it, without a warning
    right = cli(shop_env, "purge", APP, "default", "--yes")
    assert (right.returncode, right.stderr, right.stdout.strip()) == (0, "", "purged 1 task(s) from default")


@pytest.mark.timeout(60)
def test_enqueue_with_a_missing_argument_is_a_usage_error_and_sends_nothing(
    shop: App, shop_env: dict[str, str]
) -> None:
    done = cli(shop_env, "enqueue", APP, "tests.apps.newcomer_app.charge", "--args", "[1]")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("missing a required argument: 'amount' (nothing was sent)")
    assert sum(q.ready for q in shop.broker.stats()) == 0


@pytest.mark.timeout(60)
def test_enqueue_and_wait_for_a_task_that_fails_is_one_line_naming_its_error(
    shop_worker: ShopWorker, shop_env: dict[str, str]
) -> None:
    done = cli(shop_env, "enqueue", APP, "tests.apps.newcomer_app.charge", "--args", "[4, -2]", "--wait", "20")
    assert_one_line(done, 1, "the task failed: ValueError: negative amount -2 for order 4")
    assert len(done.stdout.split()) == 1  # its id, printed before waiting
