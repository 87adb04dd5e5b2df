"""Settings are checked when the app is built (issue 14, frictions 2 and 11).

A Celery user's ``App("x", lease="30")`` was a raw ``TypeError`` deep inside, ``track_started="no"``
turned tracking on, ``redis://host/abc`` silently used database 0, and the default
``sqlite:///conveyor.db`` meant another file in each directory a process started in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from conveyor import App, ConfigurationError, ResultTimeout, Settings
from conveyor.settings import SettingsDict
from conveyor.testing import drain


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lease": "30"}, "setting lease must be a number of seconds (float), got '30' (str)"),
        ({"lease": True}, "setting lease must be a number of seconds (float), got True (bool)"),
        ({"track_started": "no"}, "setting track_started must be True or False (bool), got 'no' (str) (a string"),
        ({"concurrency": "4"}, "setting concurrency must be an integer or None (int), got '4' (str)"),
        ({"max_deliveries": 2.5}, "setting max_deliveries must be an integer (int), got 2.5 (float)"),
        ({"default_queue": 5}, "setting default_queue must be a string (str), got 5 (int)"),
        ({"log_level": None}, "setting log_level must be a string (str), got None"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting_and_its_type(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        App("x", broker="memory://", **settings)
    assert str(info.value).startswith(message)


def test_right_types_pass_and_an_int_is_a_fine_number_of_seconds() -> None:
    app = App("x", broker="memory://", lease=30, track_started=False, concurrency=None, result_ttl=0.5)
    assert (app.settings.lease, app.settings.track_started, app.settings.result_ttl) == (30, False, 0.5)


@pytest.mark.parametrize("url", ["redis://localhost:6379/abc", "redis://localhost/0x", "rediss://h:1/db1"])
def test_a_redis_url_whose_database_is_not_a_number_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="the path of a Redis URL is the database number"):
        App("x", broker=url)
    with pytest.raises(ConfigurationError, match="setting backend_url: the path of a Redis URL"):
        App("x", broker="memory://", backend=url)


def test_a_redis_url_with_a_password_is_masked_in_the_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        App("x", broker="redis://:hunter2@localhost/abc")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["redis://localhost:6379/3", "redis://localhost", "redis://localhost/"])
def test_redis_urls_with_a_database_number_or_none_pass(url: str) -> None:
    assert App("x", broker=url).settings.broker_url == url


@pytest.fixture
def default_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """``App("x")`` with no broker setting at all, built in ``tmp_path``: the default SQLite file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    app = App("x")
    yield app
    app.close()


def test_a_relative_sqlite_path_is_made_absolute_once_when_the_app_is_built(default_app: App, tmp_path: Path) -> None:
    app = default_app
    assert app.settings.broker_url == f"sqlite:///{tmp_path}/conveyor.db"
    assert app.settings.result_url == app.settings.broker_url
    os.chdir("/")  # a later chdir (a daemon, gunicorn) changes nothing
    assert app.settings.broker_url == f"sqlite:///{tmp_path}/conveyor.db"
    assert repr(app) == f"<App x broker=sqlite:///{tmp_path}/conveyor.db>"


def test_sqlite_options_and_absolute_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = App("x", broker="sqlite:///q.db?synchronous=full", backend=f"sqlite:///{tmp_path}/r.db")
    assert app.settings.broker_url == f"sqlite:///{tmp_path}/q.db?synchronous=full"
    assert app.settings.backend_url == f"sqlite:///{tmp_path}/r.db"


def test_the_typed_dict_of_app_keywords_matches_the_settings() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    hints = get_type_hints(SettingsDict)
    assert set(hints) == set(fields)
    hint_names = {
        name: str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "") for name, hint in hints.items()
    }
    assert hint_names == {name: str(kind) for name, kind in fields.items()}


def test_an_unknown_broker_scheme_fails_when_the_app_is_built_not_at_the_first_delay() -> None:
    with pytest.raises(ConfigurationError, match="no broker for URL 'kafka://h:9092'; known schemes: amqp"):
        App("x", broker="kafka://h:9092", backend="memory://")


def test_a_get_that_times_out_on_pending_names_the_database_it_looked_in(default_app: App, tmp_path: Path) -> None:
    app = default_app

    @app.task
    def charge() -> None: ...

    with pytest.raises(ResultTimeout) as info:
        charge.delay().get(timeout=0.1)
    assert f"(state PENDING: nothing recorded; is a worker serving sqlite:///{tmp_path}/conveyor.db?" in str(info.value)


def test_app_result_gives_the_handle_of_a_stored_id_and_checks_the_task_named() -> None:
    app, other = App("x", broker="memory://"), App("y", broker="memory://")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @other.task
    def stranger() -> None: ...

    stored = add.delay(1, 2).id  # e.g. kept by a web request
    drain(app)
    assert app.result(stored, add).get(timeout=1) == 3
    assert app.result(stored).get(timeout=1) == 3
    with pytest.raises(ConfigurationError, match="is not a task of app 'x'"):
        app.result(stored, stranger)
