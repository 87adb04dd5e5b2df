"""``ctx.retry()`` on a task with no retries left fails it with an error that says what to set (issue 14, friction 6).

The user's case (``retries`` left at its default of 0, a real worker) is in tests/e2e/test_newcomer_errors.py.
"""

from __future__ import annotations

import pytest

from conveyor import App, TaskFailed, current_context
from conveyor.testing import drain


@pytest.mark.parametrize(("retries", "expected"), [(0, "allows 0 retries (the default)"), (1, "used all of its 1")])
def test_a_retry_past_the_task_s_retries_names_the_limit_and_the_option(retries: int, expected: str) -> None:
    # Given a task that always asks for a retry, with `retries` allowed
    app = App("retry-messages", broker="memory://")

    @app.task(name="always_again", retries=retries)
    def always_again() -> None:
        current_context().retry(countdown=0.01, reason="upstream not ready")

    result = always_again.delay()
    drain(app, timeout=5)
    # Then once the retries are spent it fails, saying why and what to set
    with pytest.raises(TaskFailed) as info:
        result.get(timeout=1)
    message = str(info.value)
    assert message.startswith("conveyor.errors.Retry: retry requested (upstream not ready), but task 'always_again' ")
    assert expected in message and "@app.task(retries=N)" in message
    assert len(result.errors) == retries + 1
