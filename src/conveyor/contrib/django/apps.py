"""The Django app config: put ``"conveyor.contrib.django"`` in ``INSTALLED_APPS`` to discover tasks."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):
    """Imports the ``tasks`` module of every installed app once Django has loaded them all.

    Discovery happens here rather than when the conveyor app is built: a ``tasks.py`` imports the
    conveyor app to declare its tasks, so building the app cannot import them (a circular import).
    """

    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "conveyor"

    def ready(self) -> None:
        from conveyor.contrib.django import autodiscover

        autodiscover()
