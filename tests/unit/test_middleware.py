"""The middleware pipeline: the chain is built once, hooks run in the documented order, verdicts
decide, and options are owned, on the memory broker and on SQLite (through ``testing.drain``,
which runs the worker's executor and chain)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conveyor import (
    App,
    BrokerUnavailable,
    Bury,
    ConfigurationError,
    Job,
    Middleware,
    Outcome,
    Requeue,
    Skip,
    State,
    TaskFailed,
    TimeLimitExceeded,
    current_context,
)
from conveyor.middleware import HookChain
from conveyor.testing import drain
from conveyor.worker.events import Ended
from conveyor.worker.executor import BackendDown, Executor
from conveyor.worker.settle import BatchSettler


class Recorder(Middleware):
    """Appends ``name:hook`` to a shared list for every hook it sees."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def on_child_start(self, app: App) -> None:
        self.seen.append(f"{self.name}:child_start")

    def on_child_stop(self, app: App) -> None:
        self.seen.append(f"{self.name}:child_stop")

    def before_run(self, job: Job) -> None:
        self.seen.append(f"{self.name}:before_run")

    @contextlib.contextmanager
    def around_call(self, job: Job) -> Iterator[None]:
        self.seen.append(f"{self.name}:enter")
        try:
            yield
        finally:
            self.seen.append(f"{self.name}:exit")

    def after_success(self, job: Job, value: Any) -> None:
        self.seen.append(f"{self.name}:after_success={value}")

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        self.seen.append(f"{self.name}:after_settle={outcome.ended}")


class OnlyBefore(Middleware):
    def before_run(self, job: Job) -> None:
        pass


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'q.db'}"


def test_the_chain_keeps_only_the_middleware_that_override_each_hook() -> None:
    # Given one middleware that overrides before_run only, and one that overrides nothing
    only, idle = OnlyBefore(), Middleware()
    # When the chain is built
    chain = HookChain([only, idle])
    # Then each hook's tuple holds only what overrides it
    assert chain.before_run == (only.before_run,)
    empty = [chain.around_call, chain.after_success, chain.after_failure, chain.after_settle, chain.on_child_start]
    assert all(hooks == () for hooks in empty)


def test_hooks_run_in_order_before_first_to_last_and_after_last_to_first(url: str) -> None:
    # Given two user middleware, a then b
    seen: list[str] = []
    app = App("order", broker=url, middleware=[Recorder("a", seen)])
    app.add_middleware(Recorder("b", seen))

    @app.task
    def add(x: int, y: int) -> int:
        seen.append("call")
        return x + y

    # When one task runs through drain
    result = add.delay(1, 2)
    drain(app)

    # Then before hooks and contexts go a then b, after hooks b then a, around the child's lifetime
    assert result.get(timeout=5) == 3
    assert seen == [
        "a:child_start",
        "b:child_start",
        "a:before_run",
        "b:before_run",
        "a:enter",
        "b:enter",
        "call",
        "b:exit",
        "a:exit",
        "b:after_success=3",
        "a:after_success=3",
        "b:after_settle=SUCCESS",
        "a:after_settle=SUCCESS",
        "b:child_stop",
        "a:child_stop",
    ]
    app.close()


class BuryValueErrors(Middleware):
    def after_failure(self, job: Job, exc: Exception) -> Bury | None:
        return Bury(f"no retry for {exc}") if isinstance(exc, ValueError) else None


def test_a_user_verdict_overrules_retries(url: str) -> None:
    # Given a task with retries, and a middleware that dead-letters ValueErrors at once
    app = App("verdicts", broker=url, middleware=[BuryValueErrors()])
    runs: list[int] = []

    @app.task(retries=5, backoff=0.01)
    def flaky(kind: str) -> None:
        runs.append(1)
        raise ValueError("bad input") if kind == "value" else KeyError("k")

    # When one task raises ValueError and another KeyError
    bad, other = flaky.delay("value"), flaky.delay("key")
    outcomes = drain(app, timeout=20)

    # Then the ValueError is recorded FAILURE and dead-lettered after one run, without a retry
    with pytest.raises(TaskFailed):
        bad.get(timeout=5)
    assert [d.reason for d in app.broker.dead_letters()] == ["no retry for bad input"]
    # And the KeyError went through Retries as before (five retries, then FAILURE)
    assert other.state is State.FAILURE
    assert len(runs) == 1 + 6
    assert [o.ended for o in outcomes].count(Ended.RETRY) == 5
    app.close()


class SkipTagged(Middleware):
    def before_run(self, job: Job) -> None:
        if job.message.headers.get("skip") == "yes":
            raise Skip("skipped by a header")


def test_skip_in_before_run_records_revoked_and_does_not_run(url: str) -> None:
    app = App("skip", broker=url, middleware=[SkipTagged()])
    ran: list[str] = []

    @app.task
    def work() -> None:
        ran.append("ran")

    r = work.apply_async(headers={"skip": "yes"})
    [outcome] = drain(app)

    assert (outcome.ended, ran, r.state) == ("REVOKED", [], State.REVOKED)
    app.close()


class Unreachable(Middleware):
    def before_run(self, job: Job) -> None:
        raise BrokerUnavailable("the session store is down")


def test_a_broker_error_before_the_run_gives_the_delivery_back_uncounted() -> None:
    # Given a middleware whose before_run cannot reach its server
    app = App("down", broker="memory://", middleware=[Unreachable()])
    ran: list[int] = []

    @app.task
    def work() -> None:
        ran.append(1)

    work.delay()
    [delivery] = app.broker.reserve([app.settings.default_queue], 1, owner="t", lease=30, timeout=0)
    # When the executor runs it, BackendDown tells the pool to nack it uncounted; nothing ran
    with pytest.raises(BackendDown):
        Executor(app, "t").run(delivery)
    assert ran == []
    app.close()


class Tagged(Middleware):
    options: ClassVar[frozenset[str]] = frozenset({"tag"})

    def __init__(self) -> None:
        self.tags: list[str] = []

    def before_run(self, job: Job) -> None:
        self.tags.append(job.options.extra.get("tag", "-"))


def test_a_middleware_owns_its_options_and_reads_them_from_the_job() -> None:
    tagged = Tagged()
    app = App("options", broker="memory://", middleware=[tagged])
    options: dict[str, Any] = {"tag": "billing"}  # a custom option: mypy knows only the built-in ones

    @app.task(retries=1, **options)
    def billed() -> None: ...

    @app.task
    def plain() -> None: ...

    billed.delay()
    plain.delay()
    drain(app)
    assert sorted(tagged.tags) == ["-", "billing"]
    assert app.option_owners()["tag"] == "Tagged"
    app.close()


def test_option_errors_name_the_owner_and_clashes_are_refused() -> None:
    app = App("owners", broker="memory://")
    unknown: dict[str, Any] = {"tag": "x"}
    # An option no middleware owns yet fails at decoration, listing the owners
    with pytest.raises(ConfigurationError, match=r"unknown task option\(s\) tag; .*expires \(Revocation\)"):
        app.task(**unknown)

    # A middleware may not claim an option another owns
    class Clash(Middleware):
        options: ClassVar[frozenset[str]] = frozenset({"retries"})

    with pytest.raises(ConfigurationError, match=r"retries \(Retries\)"):
        app.add_middleware(Clash())

    # And nothing can be added once the chain is built (a worker finalized the app)
    app.finalize()
    with pytest.raises(ConfigurationError, match="finalized"):
        app.add_middleware(Tagged())


def test_the_chain_is_built_once() -> None:
    app = App("once", broker="memory://")
    assert app.finalize() is app.finalize()
    assert Executor(app, "w").chain is app.finalize()


def test_an_async_task_is_wrapped_by_a_sync_around_call(url: str) -> None:
    # Given a middleware with only a synchronous around_call
    seen: list[str] = []
    app = App("async", broker=url, middleware=[Recorder("a", seen)])

    @app.task
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        seen.append(f"call in task {current_context().task}")
        return x * 2

    r = fetch.delay(21)
    drain(app)
    assert r.get(timeout=5) == 42
    assert seen[2:5] == ["a:enter", "call in task " + fetch.name, "a:exit"]
    app.close()


def test_arun_awaits_an_async_task_on_the_running_loop_with_its_soft_limit() -> None:
    # Given an async task and a slow one with a soft time limit, run by Executor.arun (the asyncio pool's entry)
    app = App("arun", broker="memory://")

    @app.task
    async def quick(x: int) -> int:
        return x + 1

    @app.task(soft_time_limit=0.1)
    async def slow() -> None:
        await asyncio.sleep(5)

    @app.task
    def sync_add(x: int, y: int) -> int:
        return x + y

    first, second, third = quick.delay(1), slow.delay(), sync_add.delay(2, 3)
    deliveries = app.broker.reserve([app.settings.default_queue], 3, owner="t", lease=30, timeout=0)
    settler = BatchSettler(app)
    executor = Executor(app, "t", settler)

    async def run_all() -> list[Outcome]:
        return list(await asyncio.gather(*(executor.arun(d) for d in deliveries)))

    # When they run concurrently on one loop
    outcomes = asyncio.run(run_all())
    pending = settler.take()
    app.backend.set_many(pending.results, 60)
    app.broker.ack(pending.acks)

    # Then the quick ones succeed and the slow one fails with TimeLimitExceeded from asyncio.timeout
    assert sorted(o.ended for o in outcomes) == ["FAILURE", "SUCCESS", "SUCCESS"]
    assert first.get(timeout=1) == 2
    assert third.get(timeout=1) == 5
    with pytest.raises(TimeLimitExceeded):
        second.get(timeout=1)
    app.close()


def test_timelimit_error_type_is_the_public_one() -> None:
    # The soft limit raised by asyncio.timeout is conveyor's TimeLimitExceeded (catchable in the task)
    from conveyor.worker.timelimits import async_soft_time_limit

    async def over() -> None:
        async with async_soft_time_limit(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeLimitExceeded):
        asyncio.run(over())


def test_a_verdict_from_retries_is_a_requeue() -> None:
    from conveyor.retries import Retries

    app = App("requeue", broker="memory://")

    @app.task(retries=2, backoff=4.0)
    def failing() -> None: ...

    failing.delay()
    [delivery] = app.broker.reserve([app.settings.default_queue], 1, owner="t", lease=30, timeout=0)
    job = Job(delivery, app.codec.decode(delivery.body), failing, "t", BatchSettler(app))
    verdict = Retries().after_failure(job, RuntimeError("boom"))
    assert isinstance(verdict, Requeue) and 0 <= verdict.delay <= 4.0
    assert verdict.reason == "(attempt 1 of 2): RuntimeError: boom"
    app.close()


def test_a_finished_job_is_freed_at_once_not_left_to_the_cyclic_gc() -> None:
    # Given tasks that report progress (the Results middleware gives each job a progress writer)
    import gc

    app = App("gc", broker="memory://")

    @app.task
    def report() -> int:
        current_context().progress(0.5)
        return 1

    for _ in range(20):
        report.delay()
    gc.collect()
    gc.disable()
    try:
        # When they run
        drain(app)
        # Then no Job is left waiting for the cyclic GC (a reference cycle per task costs CPU on the hot path)
        assert [o for o in gc.get_objects() if isinstance(o, Job)] == []
    finally:
        gc.enable()
        app.close()


def test_every_task_option_has_one_owner_and_mypy_knows_the_built_in_ones() -> None:
    import dataclasses

    from conveyor.task import TaskOptions, TaskOptionsDict

    # The options the built-in middleware and the task own are exactly TaskOptions' fields and the typed dict's keys
    owners = App("owners", broker="memory://").option_owners()
    fields = {f.name for f in dataclasses.fields(TaskOptions)} - {"extra"}
    assert set(owners) == fields == set(TaskOptionsDict.__annotations__)
    assert owners["soft_time_limit"] == "TimeLimits" and owners["dead_letter_on_failure"] == "DeadLetters"


def test_a_pool_that_never_calls_start_still_gets_on_child_start_once() -> None:
    # Given an executor whose pool does not call start() (the hooks then run before the first delivery)
    seen: list[str] = []
    app = App("lazy", broker="memory://", middleware=[Recorder("a", seen)])

    @app.task
    def work() -> None: ...

    work.delay()
    work.delay()
    executor = Executor(app, "t")
    for delivery in app.broker.reserve([app.settings.default_queue], 2, owner="t", lease=30, timeout=0):
        executor.run(delivery)
    executor.close()
    assert seen.count("a:child_start") == 1 and seen[0] == "a:child_start" and seen[-1] == "a:child_stop"
    app.close()


class Watcher(Middleware):
    """Records the tasks it sees, for the tasks whose name ends in ``watched`` only (``wants``)."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def wants(self, task: Any, hook: str) -> bool:
        return bool(task.name.endswith("watched"))

    def before_run(self, job: Job) -> None:
        self.seen.append(f"before_run:{job.task.name}")

    def after_settle(self, job: Job, outcome: Outcome) -> None:
        self.seen.append(f"after_settle:{job.task.name}")


def test_a_middleware_that_wants_no_hook_for_a_task_is_left_out_of_that_task_only(url: str) -> None:
    # Given a middleware that wants only the tasks named *watched
    seen: list[str] = []
    app = App("wants", broker=url, middleware=[Watcher(seen)])

    @app.task(name="t.watched")
    def watched() -> int:
        return 1

    @app.task(name="t.plain")
    def plain() -> int:
        return 2

    # When both run
    results = [plain.delay(), watched.delay(), plain.delay()]
    drain(app)

    # Then both ran, and the middleware saw the watched task only
    assert [r.get(timeout=5) for r in results] == [2, 1, 2]
    assert seen == ["before_run:t.watched", "after_settle:t.watched"]
    app.close()


def hook_owners(hooks: tuple[Any, ...]) -> list[str]:
    return [type(hook.__self__).__name__ for hook in hooks]


def test_a_plan_leaves_out_the_features_a_task_and_its_message_do_not_use() -> None:
    app = App("plans", broker="memory://")

    @app.task(ignore_result=True)
    def noop() -> None: ...

    @app.task(rate_limit="100/s", concurrency_key=lambda: "k", max_concurrency=1, dead_letter_on_failure=True)
    def limited() -> None: ...

    @app.task
    def step(x: int) -> int:
        return x + 1

    hooks = app.finalize()
    # A no-op task outside any workflow: no FlowControl, no Workflows, no result to write, no dead letter
    plain = hooks.plan(noop, noop.message())
    assert hook_owners(plain.before_run) == ["Revocation", "Results"]
    assert hook_owners(plain.after_success) == []
    assert hook_owners(plain.after_failure) == ["Retries"]
    assert hook_owners(plain.after_settle) == []
    assert plain.context is None
    # A task with the options keeps each feature's hooks
    full = hooks.plan(limited, limited.message())
    assert hook_owners(full.before_run) == ["Revocation", "FlowControl", "Results"]
    assert hook_owners(full.after_failure) == ["Retries", "DeadLetters"]
    assert hook_owners(full.after_settle) == ["FlowControl"]
    # A message of a chain gets the Workflows hooks; the same task sent alone does not
    linked = step.message((0,))
    linked.links.append({"task": step.name})
    assert hook_owners(hooks.plan(step, linked).before_run) == ["Revocation", "Workflows", "Results"]
    assert hook_owners(hooks.plan(step, linked).after_success) == ["Results", "Workflows"]
    assert hook_owners(hooks.plan(step, step.message((0,))).after_success) == ["Results"]
    app.close()


def test_tasks_that_use_a_feature_still_get_it_beside_tasks_that_skip_it() -> None:
    from conveyor import chain

    # Given a rate-limited task (a burst of one token), a chain, and plain tasks, all in one drain
    app = App("still", broker="memory://")

    @app.task(rate_limit="1/h")
    def rare(i: int) -> int:
        return i

    @app.task
    def step(x: int) -> int:
        return x + 1

    plain = [step.delay(10), step.delay(20)]
    rare_runs = [rare.delay(1), rare.delay(2)]
    chained = chain(step.s(0), step.s(), step.s()).apply_async()
    outcomes = drain(app, include_scheduled=False)

    # Then the chain ran to its end, the plain tasks ran, and only one run of the rate-limited task was allowed
    assert chained.get(timeout=5) == 3
    assert [r.get(timeout=5) for r in plain] == [11, 21]
    rare_ended = [o.ended for o in outcomes if o.task == rare.name]
    assert sorted(rare_ended, key=str) == sorted([Ended.SUCCESS, Ended.RETURNED], key=str)
    assert rare_runs[0].get(timeout=5) == 1
    app.close()
