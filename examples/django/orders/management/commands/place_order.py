"""``manage.py place_order TOTAL``: what a view does: create an order and send its receipt task on commit.

Prints one JSON line: the task id, whether the task was sent before the commit, and, with --wait,
the task's result and the order's state after it ran. ``--rollback`` rolls the transaction back.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from mysite.conveyor_app import app

from conveyor.contrib.django import delay_on_commit
from orders.models import Order
from orders.tasks import send_receipt


class Rollback(Exception):
    """Raised to roll the transaction back."""


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = "Create an order and send its receipt once the order is committed."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("total")
        parser.add_argument("--rollback", action="store_true")
        parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the task's result")

    def handle(self, *args: Any, **options: Any) -> None:
        out: dict[str, Any] = {}
        try:
            with transaction.atomic():
                order = Order.objects.create(total=decimal.Decimal(options["total"]))
                result = delay_on_commit(send_receipt, order.id)
                out["id"], out["order"] = result.id, order.id
                out["queued_before_commit"] = sum(s.ready for s in app.broker.stats())
                if options["rollback"]:
                    raise Rollback
        except Rollback:
            out["rolled_back"] = True
        out["queued_after_commit"] = sum(s.ready for s in app.broker.stats())
        if options["wait"]:
            out["result"] = str(result.get(timeout=options["wait"]))
            out["receipt_sent"] = Order.objects.get(pk=order.id).receipt_sent
        self.stdout.write(json.dumps(out))
