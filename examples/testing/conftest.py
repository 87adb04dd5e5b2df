"""The tests use the shop's own app: the plugin's fixtures (conveyor_memory, conveyor_eager, conveyor_worker)
take it from this override of ``conveyor_app``."""

from __future__ import annotations

import pytest
from shop.tasks import app

from conveyor import App


@pytest.fixture
def conveyor_app() -> App:
    return app
