"""The routing table: App(routes=...) beside the task's and the call's queue=."""

from __future__ import annotations

import pytest

from conveyor import App, ConfigurationError


def test_routes_pick_the_queue_by_name_or_pattern_and_explicit_queues_win() -> None:
    app = App("shop", broker="memory://", routes={"shop.mail.*": "mail", "shop.mail.digest": "slow", "*.pdf": "pdf"})

    @app.task(name="shop.mail.receipt")
    def receipt() -> None: ...

    @app.task(name="shop.mail.digest")
    def digest() -> None: ...

    @app.task(name="shop.render.pdf", queue="gpu")
    def pdf() -> None: ...

    @app.task(name="shop.other")
    def other() -> None: ...

    assert receipt.message().queue == "mail"
    assert digest.message().queue == "slow"  # an exact name wins over a pattern
    assert pdf.message().queue == "gpu"  # the task's own queue= wins over the table
    assert other.message().queue == "default"
    assert receipt.message(queue="urgent").queue == "urgent"  # and the call's over both
    assert receipt.s().message(app).queue == "mail"


@pytest.mark.parametrize("routes", [{"": "mail"}, {"shop.*": ""}, {"shop.*": 3}])
def test_a_bad_routing_table_is_an_error_when_the_app_is_built(routes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="routes"):
        App("shop", broker="memory://", routes=routes)  # type: ignore[arg-type]
