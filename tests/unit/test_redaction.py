"""Passwords in URLs are masked wherever conveyor prints one (issue 14, friction 9): pure, no server.

Where they are printed (status, repr(app), the worker banner) is tested end to end in
tests/e2e/test_newcomer_cli.py.
"""

from __future__ import annotations

import pytest

from conveyor import App
from conveyor.settings import Settings, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F?prefix=shop", "amqp://guest:***@127.0.0.1:5672/%2F?prefix=shop"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p@ss@h/0", "rediss://user:***@h/0"),  # an unencoded @ does not leak the rest
        ("redis://u:p%40ss@h/0?password=again&prefix=x", "redis://u:***@h/0?password=***&prefix=x"),
        ("unix:///tmp/redis.sock?db=2&password=pw", "unix:///tmp/redis.sock?db=2&password=***"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sqlite:///conveyor.db", "sqlite:///conveyor.db"),
    ],
)
def test_a_url_keeps_everything_but_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_url_in_a_message_is_masked() -> None:
    message = "Redis at redis://:pw@h:1/0 did not answer; RabbitMQ at amqp://guest:guest@h/ neither"
    assert redact_text(message) == "Redis at redis://:***@h:1/0 did not answer; RabbitMQ at amqp://guest:***@h/ neither"


def test_repr_of_an_app_and_of_its_settings_masks_urls_and_the_secret() -> None:
    app = App("shop", broker="amqp://guest:guest@h/", backend="redis://:pw@h/1", secret="signing-key")
    assert repr(app) == "<App shop broker=amqp://guest:***@h/>"
    shown = repr(app.settings)
    assert "guest:***@h/" in shown and "redis://:***@h/1" in shown and "secret='***'" in shown
    assert "pw@" not in shown and "guest@" not in shown and "signing-key" not in shown
    assert repr(Settings()).startswith("Settings(broker_url='sqlite:///conveyor.db', backend_url=None,")
