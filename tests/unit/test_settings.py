"""Settings: defaults, environment overlay, validation, and docs that list every setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Settings
from conveyor.task import TaskOptions

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_defaults_are_the_embedded_sqlite_file() -> None:
    settings = Settings.build({}, environ={})
    assert settings.broker_url == "sqlite:///conveyor.db"
    assert settings.result_url == settings.broker_url


def test_environment_wins_over_keywords_with_typed_casts() -> None:
    env = {"CONVEYOR_MAX_DELIVERIES": "9", "CONVEYOR_SECRET": "none", "CONVEYOR_BACKEND_URL": "memory://"}
    settings = Settings.build({"max_deliveries": 2, "secret": "s"}, environ=env)
    assert (settings.max_deliveries, settings.secret, settings.result_url) == (9, None, "memory://")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lease": 0}, "lease"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"prefetch": 0}, "prefetch"),
    ],
)
def test_bad_values_are_rejected(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Settings.build(overrides, environ={})


def test_docs_list_every_setting_and_task_option() -> None:
    text = DOCS.read_text()
    for field in dataclasses.fields(Settings):
        assert f"`{field.name}`" in text, field.name
        assert f"CONVEYOR_{field.name.upper()}" in text, field.name
    for field in dataclasses.fields(TaskOptions):
        assert f"`{field.name}`" in text, field.name
