"""Settings of the example project: SQLite for Django's database and for conveyor's queue, beside this file."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(os.environ.get("EXAMPLE_DATA_DIR", Path(__file__).resolve().parent.parent))

SECRET_KEY = "example-only-not-secret"
DEBUG = True
USE_TZ = True
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["conveyor.contrib.django", "orders"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The conveyor app's keyword arguments (conveyor.contrib.django.app_from_settings).
CONVEYOR = {
    "name": "mysite",
    "broker": f"sqlite:///{BASE_DIR / 'queue.db'}",
}
