"""The conveyor app of the project; the worker runs ``conveyor worker mysite.conveyor_app:app``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from conveyor.contrib.django import app_from_settings, setup_django

app = app_from_settings()
setup_django()  # after `app` exists: the installed apps' tasks.py (found by autodiscovery) import it
