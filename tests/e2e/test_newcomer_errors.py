"""A Celery user's failing tasks, through a real worker (issue 14, frictions 13 and 6).

``get()`` raises the task's own exception type when the caller has it and it is built from its
message, so ``except ValueError`` matches, while ``except TaskFailed`` keeps matching; the worker's
traceback comes along. ``ctx.retry()`` on a task without ``retries=`` says what to set.
"""

from __future__ import annotations

import traceback

import pytest

from conveyor import App, ConveyorError, TaskFailed
from tests.apps import newcomer_app
from tests.e2e.newcomer import ShopWorker, shop, shop_env, shop_worker

__all__ = ["shop", "shop_env", "shop_worker"]  # fixtures


@pytest.mark.timeout(60)
def test_except_value_error_matches_a_task_s_value_error(shop_worker: ShopWorker) -> None:
    # Given a task that raises ValueError in the worker
    result = newcomer_app.charge.delay(7, -5)
    # When the caller waits for it, catching ValueError as with a local call (the user's code)
    try:
        result.get(timeout=20)
    except ValueError as exc:
        caught: ValueError = exc
    else:
        pytest.fail("get() did not raise")
    # Then it is caught, with the task's message, and it is a TaskFailed as well (code that caught that still does)
    assert str(caught) == "negative amount -5 for order 7"
    assert isinstance(caught, TaskFailed) and isinstance(caught, ConveyorError)
    assert caught.type_name == "ValueError" and caught.remote_message == "negative amount -5 for order 7"
    # And it prints as the task's exception, followed by the worker's traceback
    printed = "".join(traceback.format_exception(caught))
    assert "ValueError: negative amount -5 for order 7" in printed
    assert f"Traceback of task {result.id} in its worker:" in printed
    assert 'raise ValueError(f"negative amount {amount} for order {order_id}")' in printed
    assert caught.traceback == result.traceback
    # And .result, as in Celery, is that exception too (not its text)
    assert isinstance(result.result, ValueError) and str(result.result) == str(caught)


@pytest.mark.timeout(60)
def test_a_user_s_own_exception_and_a_key_error_come_back_as_themselves(shop_worker: ShopWorker) -> None:
    # Given tasks raising an exception of the tasks module, and a KeyError
    declined = newcomer_app.charge.delay(8, 0)
    missing = newcomer_app.price.delay("pear")
    # Then the caller catches each by its own type
    with pytest.raises(newcomer_app.CardDeclined) as info:
        declined.get(timeout=20)
    assert str(info.value) == "card declined for order 8"
    assert isinstance(info.value, TaskFailed)
    assert info.value.type_name == "tests.apps.newcomer_app.CardDeclined"
    with pytest.raises(KeyError) as key_info:
        missing.get(timeout=20)
    assert key_info.value.args == ("pear",)  # the key itself, as a local dict lookup gives it


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_be_rebuilt_is_a_task_failed_with_the_traceback(shop_worker: ShopWorker) -> None:
    # Given a task raising a user exception whose constructor wants a status and a body
    result = newcomer_app.charge.delay(9, 20_000)
    # Then the caller gets TaskFailed as before, naming the type, with the worker's traceback
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=20)
    assert not isinstance(info.value, newcomer_app.GatewayError)
    assert str(info.value) == "tests.apps.newcomer_app.GatewayError: gateway answered 502: bad gateway"
    assert "raise GatewayError(502" in info.value.traceback
    assert any("raise GatewayError(502" in note for note in info.value.__notes__)


@pytest.mark.timeout(60)
def test_retry_on_a_task_without_retries_says_what_to_set(shop_worker: ShopWorker, shop: App) -> None:
    # Given a task that calls ctx.retry() but was declared without retries= (the default 0)
    result = newcomer_app.needs_retry.delay()
    # Then it fails with an error that says how many retries it allows and what to set
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=20)
    assert "allows 0 retries" in str(info.value)
    assert "@app.task(retries=N)" in str(info.value)


@pytest.mark.timeout(60)
def test_delay_with_a_missing_argument_fails_at_the_call_and_sends_nothing(shop: App) -> None:
    # Given the shop's charge(order_id, amount, currency="EUR") task, on a real broker
    # When the user forgets an argument, or misspells one
    with pytest.raises(
        TypeError,
        match=r"newcomer_app.charge\(order_id, amount, currency='EUR'\): missing a required argument: 'amount'",
    ):
        newcomer_app.charge.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'curency'"):
        newcomer_app.charge.apply_async((1, 2), {"curency": "USD"})
    # Then nothing was enqueued
    assert sum(q.ready + q.scheduled for q in shop.broker.stats()) == 0
    # And a right call still goes through
    newcomer_app.charge.apply_async((1,), {"amount": 2})
    assert sum(q.ready for q in shop.broker.stats()) == 1
