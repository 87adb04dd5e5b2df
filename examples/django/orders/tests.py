"""Django's own test runner with conveyor's eager mode (docs/django.md): ``python manage.py test orders``.

The task runs in the test's process and transaction, so it sees the order the test created; the
on-commit callbacks are run by Django's ``captureOnCommitCallbacks(execute=True)``.
"""

from __future__ import annotations

import decimal

from django.test import TestCase
from mysite.conveyor_app import app

from conveyor.contrib.django import delay_on_commit
from conveyor.testing import eager, in_memory
from orders.models import Order
from orders.tasks import send_receipt


class SendReceiptTests(TestCase):  # type: ignore[misc]  # Django ships no types
    def test_the_receipt_task_runs_eagerly_on_commit(self) -> None:
        with in_memory(app), eager(app):
            order = Order.objects.create(total=decimal.Decimal("7.25"))
            with self.captureOnCommitCallbacks(execute=True) as callbacks:
                result = delay_on_commit(send_receipt, order.id)
            self.assertEqual(len(callbacks), 1)
            self.assertEqual(result.get(timeout=1), decimal.Decimal("7.25"))
            order.refresh_from_db()
            self.assertTrue(order.receipt_sent)
