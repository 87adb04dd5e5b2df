"""The orders app's tasks: found by conveyor.contrib.django's autodiscovery (no import needed elsewhere)."""

from __future__ import annotations

import decimal

from mysite.conveyor_app import app

from orders.models import Order


@app.task
def send_receipt(order_id: int) -> decimal.Decimal:
    """Mark the order's receipt sent; the row must be committed before this runs (delay_on_commit)."""
    order = Order.objects.get(pk=order_id)
    order.receipt_sent = True
    order.save(update_fields=["receipt_sent"])
    total: decimal.Decimal = order.total
    return total
