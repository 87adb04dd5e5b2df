"""The dashboard's HTTP surface on the memory engine: pages, JSON views, token, CSRF, masking, /metrics."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from conveyor import App, pausing
from conveyor.dashboard import create_app
from conveyor.dashboard.security import CSRF_COOKIE, check_bind
from conveyor.dashboard.views import MASK, mask
from conveyor.errors import ConfigurationError


@pytest.fixture
def app() -> App:
    app = App("shop", broker_url="memory://", backend_url="memory://")

    @app.task(name="charge", queue="billing")
    def charge(amount: int, api_key: str = "") -> int:
        return amount

    charge.delay(5, api_key="s3cret")
    return app


def test_pages_and_views_read_the_engines(app: App) -> None:
    client = TestClient(create_app(app))
    for path in ("/", "/queues", "/workers", "/tasks", "/dead", "/periodic"):
        page = client.get(path)
        assert page.status_code == 200 and "dashboard.js" in page.text, path
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/nowhere").status_code == 404
    overview = client.get("/api/overview").json()
    assert [(q["queue"], q["ready"], q["paused"]) for q in overview["queues"]] == [("billing", 1, False)]
    assert "conveyor_queue_depth" in client.get("/metrics").text


def test_an_action_needs_the_csrf_value_of_its_browser(app: App) -> None:
    client = TestClient(create_app(app))
    client.get("/queues")  # sets the CSRF cookie
    csrf = client.cookies[CSRF_COOKIE]
    assert client.post("/queues/billing/pause", data={}).status_code == 403
    assert client.post("/queues/billing/pause", data={"csrf": "forged"}).status_code == 403
    other_site = client.post("/queues/billing/pause", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert other_site.status_code == 403 and pausing.paused(app.backend, ["billing"]) == set()
    done = client.post("/queues/billing/pause", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and pausing.paused(app.backend, ["billing"]) == {"billing"}
    assert client.get("/queues/billing/pause").status_code == 405  # actions are POSTs only


def test_a_token_guards_every_request(app: App) -> None:
    client = TestClient(create_app(app, token="t0k"))
    assert client.get("/api/overview").status_code == 401
    assert client.get("/api/overview", headers={"authorization": "Bearer t0k"}).status_code == 200
    assert client.get("/?token=t0k").status_code == 200  # redirected, the token kept in a cookie
    assert client.get("/api/queues").status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t0k")
    with pytest.raises(ConfigurationError, match="--token"):
        check_bind("0.0.0.0", None)


def test_secrets_are_masked(app: App) -> None:
    assert mask({"api_key": "x", "nested": {"password": "y", "n": 1}, "args": [1]}) == {
        "api_key": MASK,
        "nested": {"password": MASK, "n": 1},
        "args": [1],
    }


def test_the_command_refuses_a_public_address_without_a_token() -> None:
    from click.testing import CliRunner

    from conveyor.cli import main

    result = CliRunner().invoke(main, ["dashboard", "tests.apps.e2e_app:app", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token" in result.output
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert all(command in help_text for command in ("dashboard", "events", "inspect", "queue"))


def test_metrics_serve_the_task_series_the_engine_counts(app: App) -> None:
    from conveyor.testing import drain

    drain(app)
    text = TestClient(create_app(app)).get("/metrics").text
    assert 'conveyor_tasks_total{state="SUCCESS",task="charge"} 1.0' in text
    assert 'conveyor_task_runtime_seconds_bucket{le="+Inf",task="charge"} 1.0' in text
    assert 'conveyor_task_runtime_seconds_count{task="charge"} 1.0' in text
    assert 'conveyor_received_total{queue="billing"} 1.0' in text
    # A second dashboard (or this one restarted) reads the same counters: nothing lived in the first one's memory
    assert 'conveyor_tasks_total{state="SUCCESS",task="charge"} 1.0' in TestClient(create_app(app)).get("/metrics").text
