"""One order, whose receipt a task sends."""

from __future__ import annotations

from django.db import models


class Order(models.Model):  # type: ignore[misc]  # Django ships no types
    total = models.DecimalField(max_digits=10, decimal_places=2)
    receipt_sent = models.BooleanField(default=False)
