"""Tasks: Task subclasses, function tasks, @task, duck typing, routers, poll and timer tasks."""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import cano
import pytest


class S(enum.Enum):
    START = enum.auto()
    NEXT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


MINIMAL = cano.TaskConfig.minimal()


class Recorder(cano.WorkflowObserver):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.succeeded: list[str] = []
        self.failed: list[str] = []
        self.retries: list[tuple[str, int]] = []
        self.entered: list[str] = []

    def on_state_enter(self, state: str) -> None:
        self.entered.append(state)

    def on_task_start(self, task_id: str) -> None:
        self.started.append(task_id)

    def on_task_success(self, task_id: str) -> None:
        self.succeeded.append(task_id)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self.failed.append(task_id)

    def on_retry(self, task_id: str, attempt: int) -> None:
        self.retries.append((task_id, attempt))


def one_state(task: Any, *, res: cano.Resources | None = None) -> cano.Workflow[S]:
    wf: cano.Workflow[S] = cano.Workflow(res) if res is not None else cano.Workflow.bare()
    return wf.register(S.START, task).add_exit_states([S.DONE, S.FAILED])


def poll_workflow(poller: Any) -> cano.Workflow[S]:
    return cano.Workflow.bare().register(S.START, poller).add_exit_states([S.DONE, S.FAILED])


# --------------------------------------------------------------------------------------------
# Task subclasses


async def test_task_subclass_with_run_gets_the_resources() -> None:
    seen: list[object] = []

    class Fetch(cano.Task[S]):
        async def run(self, res: cano.Resources) -> S:
            seen.append(res.get("answer", int))
            return S.DONE

    res = cano.Resources().insert("answer", 42)
    assert await one_state(Fetch(), res=res).orchestrate(S.START) is S.DONE
    assert seen == [42]


async def test_task_subclass_with_run_bare_only() -> None:
    calls = 0

    class Tick(cano.Task[S]):
        async def run_bare(self) -> S:
            nonlocal calls
            calls += 1
            return S.DONE

    res = cano.Resources().insert("x", 1)
    assert await one_state(Tick(), res=res).orchestrate(S.START) is S.DONE
    assert calls == 1


async def test_run_wins_over_run_bare_when_both_are_defined() -> None:
    class Both(cano.Task[S]):
        async def run(self, res: cano.Resources) -> S:
            return S.DONE

        async def run_bare(self) -> S:
            return S.FAILED

    class DuckBoth:
        async def run(self, res: cano.Resources) -> S:
            return S.DONE

        async def run_bare(self) -> S:
            return S.FAILED

    assert await one_state(Both()).orchestrate(S.START) is S.DONE
    assert await one_state(DuckBoth()).orchestrate(S.START) is S.DONE


async def test_task_subclass_config_is_honoured() -> None:
    calls = 0

    class Flaky(cano.Task[S]):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig().with_fixed_retry(2, 0.001)

        async def run(self, res: cano.Resources) -> S:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError("flaky")
            return S.DONE

    assert await one_state(Flaky()).orchestrate(S.START) is S.DONE
    assert calls == 3


def test_task_defaults() -> None:
    class Plain(cano.Task[S]):
        async def run(self, res: cano.Resources) -> S:
            return S.DONE

    t = Plain()
    assert t.name() == Plain.__qualname__
    assert t.name() == "test_task_defaults.<locals>.Plain"
    assert t.config().retry_mode.max_attempts == 4  # TaskConfig(): exponential, 3 retries
    assert t.config().attempt_timeout is None


async def test_task_default_run_calls_run_bare() -> None:
    class Bare(cano.Task[S]):
        async def run_bare(self) -> S:
            return S.DONE

    assert await Bare().run(cano.Resources.empty()) is S.DONE


async def test_task_default_run_bare_raises_configuration_error() -> None:
    class Nothing(cano.Task[S]):
        pass

    with pytest.raises(cano.ConfigurationError):
        await Nothing().run_bare()


async def test_task_default_config_retries_three_times() -> None:
    calls = 0

    class Failing(cano.Task[S]):
        async def run(self, res: cano.Resources) -> S:
            nonlocal calls
            calls += 1
            raise RuntimeError("nope")

    with pytest.raises(cano.RetryExhaustedError) as info:
        await one_state(Failing()).orchestrate(S.START)
    assert calls == 4
    assert info.value.attempts == 4


async def test_task_name_defaults_to_qualname_in_observers_and_errors() -> None:
    class Broken(cano.Task[S]):
        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> S:
            raise RuntimeError("bad")

    rec = Recorder()
    wf = one_state(Broken()).with_observer(rec)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    qualname = Broken.__qualname__
    assert rec.started == [qualname]
    assert rec.failed == [qualname]
    assert qualname in str(info.value)


async def test_overridden_name_is_used_in_observers_and_errors() -> None:
    class Broken(cano.Task[S]):
        def name(self) -> str:
            return "custom-name"

        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> S:
            raise RuntimeError("bad")

    rec = Recorder()
    with pytest.raises(cano.TaskError) as info:
        await one_state(Broken()).with_observer(rec).orchestrate(S.START)
    assert rec.started == ["custom-name"]
    assert "custom-name" in str(info.value)


async def test_task_instance_is_reused_across_runs() -> None:
    class Counter(cano.Task[S]):
        def __init__(self) -> None:
            self.calls = 0

        async def run(self, res: cano.Resources) -> S:
            self.calls += 1
            return S.DONE

    counter = Counter()
    wf = one_state(counter)
    await wf.orchestrate(S.START)
    await wf.orchestrate(S.START)
    assert counter.calls == 2


# --------------------------------------------------------------------------------------------
# plain async functions


async def test_function_with_one_parameter_gets_the_resources() -> None:
    res = cano.Resources().insert("greeting", "hi")
    seen: list[object] = []

    async def fetch(r: cano.Resources) -> S:
        seen.append(r.get("greeting", str))
        return S.DONE

    assert await one_state(fetch, res=res).orchestrate(S.START) is S.DONE
    assert seen == ["hi"]


async def test_function_without_parameters_is_called_bare() -> None:
    calls = 0

    async def tick() -> S:
        nonlocal calls
        calls += 1
        return S.DONE

    res = cano.Resources().insert("x", 1)
    assert await one_state(tick, res=res).orchestrate(S.START) is S.DONE
    assert calls == 1


async def test_function_task_name_is_its_qualname() -> None:
    async def failing() -> S:
        raise RuntimeError("x")

    rec = Recorder()
    wf = one_state(cano.task(config=MINIMAL)(failing)).with_observer(rec)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    assert rec.started == [failing.__qualname__]
    assert failing.__qualname__ in str(info.value)


async def test_plain_function_name_is_its_qualname_in_observers() -> None:
    async def fine() -> S:
        return S.DONE

    rec = Recorder()
    await one_state(fine).with_observer(rec).orchestrate(S.START)
    assert rec.started == [fine.__qualname__]
    assert rec.succeeded == [fine.__qualname__]


async def test_plain_function_uses_the_default_task_config() -> None:
    calls = 0

    async def flaky() -> S:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("flaky")
        return S.DONE

    rec = Recorder()
    assert await one_state(flaky).with_observer(rec).orchestrate(S.START) is S.DONE
    assert calls == 3
    assert [a for _, a in rec.retries] == [1, 2]


async def test_bound_async_method_works_as_a_task() -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        async def handle(self, res: cano.Resources) -> S:
            self.calls += 1
            return S.DONE

    svc = Service()
    assert await one_state(svc.handle).orchestrate(S.START) is S.DONE
    assert svc.calls == 1


# --------------------------------------------------------------------------------------------
# @task


async def test_task_decorator_without_arguments() -> None:
    @cano.task
    async def step(res: cano.Resources) -> S:
        return S.DONE

    assert isinstance(step, cano.Task)
    assert step.name() == "test_task_decorator_without_arguments.<locals>.step"
    assert step.config().retry_mode.max_attempts == 4
    assert await one_state(step).orchestrate(S.START) is S.DONE


async def test_task_decorator_with_empty_parentheses() -> None:
    @cano.task()
    async def step() -> S:
        return S.DONE

    assert isinstance(step, cano.Task)
    assert step.name() == "test_task_decorator_with_empty_parentheses.<locals>.step"
    assert await one_state(step).orchestrate(S.START) is S.DONE


async def test_task_decorator_bare_function_gets_no_resources() -> None:
    calls = 0

    @cano.task
    async def step() -> S:
        nonlocal calls
        calls += 1
        return S.DONE

    res = cano.Resources().insert("k", "v")
    assert await one_state(step, res=res).orchestrate(S.START) is S.DONE
    assert calls == 1


async def test_task_decorator_with_name() -> None:
    @cano.task(name="fetch-orders", config=MINIMAL)
    async def step(res: cano.Resources) -> S:
        raise RuntimeError("down")

    assert step.name() == "fetch-orders"
    rec = Recorder()
    with pytest.raises(cano.TaskError) as info:
        await one_state(step).with_observer(rec).orchestrate(S.START)
    assert rec.started == ["fetch-orders"]
    assert rec.failed == ["fetch-orders"]
    assert "fetch-orders" in str(info.value)


async def test_task_decorator_with_minimal_config_does_not_retry() -> None:
    calls = 0

    @cano.task(config=MINIMAL)
    async def step() -> S:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    assert step.config() == MINIMAL or step.config().retry_mode.max_attempts == 1
    with pytest.raises(cano.TaskError) as info:
        await one_state(step).orchestrate(S.START)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == 1


async def test_task_decorator_with_retry_config() -> None:
    calls = 0

    @cano.task(config=cano.TaskConfig().with_fixed_retry(2, 0.001))
    async def step() -> S:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with pytest.raises(cano.RetryExhaustedError) as info:
        await one_state(step).orchestrate(S.START)
    assert info.value.attempts == 3
    assert calls == 3


async def test_task_decorated_function_can_still_be_called_in_a_run() -> None:
    @cano.task(name="n")
    async def step() -> S:
        return S.NEXT

    @cano.task
    async def after() -> S:
        return S.DONE

    wf = cano.Workflow.bare().register(S.START, step).register(S.NEXT, after).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.START) is S.DONE


# --------------------------------------------------------------------------------------------
# duck typing


async def test_duck_typed_object_with_run() -> None:
    class Duck:
        def __init__(self) -> None:
            self.seen: list[object] = []

        async def run(self, res: cano.Resources) -> S:
            self.seen.append(res.get("k"))
            return S.DONE

    duck = Duck()
    res = cano.Resources().insert("k", "v")
    assert await one_state(duck, res=res).orchestrate(S.START) is S.DONE
    assert duck.seen == ["v"]


async def test_duck_typed_object_with_run_bare() -> None:
    class Duck:
        def __init__(self) -> None:
            self.calls = 0

        async def run_bare(self) -> S:
            self.calls += 1
            return S.DONE

    duck = Duck()
    assert await one_state(duck).orchestrate(S.START) is S.DONE
    assert duck.calls == 1


async def test_duck_typed_object_config_and_name_are_used() -> None:
    class Duck:
        def __init__(self) -> None:
            self.calls = 0

        def name(self) -> str:
            return "quack"

        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig().with_fixed_retry(1, 0.001)

        async def run(self, res: cano.Resources) -> S:
            self.calls += 1
            raise RuntimeError("quack!")

    duck = Duck()
    rec = Recorder()
    with pytest.raises(cano.RetryExhaustedError) as info:
        await one_state(duck).with_observer(rec).orchestrate(S.START)
    assert duck.calls == 2
    assert info.value.attempts == 2
    assert rec.started == ["quack"]
    assert "quack" in str(info.value)


async def test_duck_typed_object_name_defaults_to_qualname() -> None:
    class Duck:
        async def run_bare(self) -> S:
            return S.DONE

    rec = Recorder()
    await one_state(Duck()).with_observer(rec).orchestrate(S.START)
    assert rec.started == [Duck.__qualname__]


# --------------------------------------------------------------------------------------------
# RouterTask


async def test_router_routes_with_resources() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            return S.DONE if res.get("ok", bool) else S.FAILED

    for flag, expected in [(True, S.DONE), (False, S.FAILED)]:
        res = cano.Resources().insert("ok", flag)
        wf = (
            cano.Workflow(res).register_router(S.START, Route()).add_exit_states([S.DONE, S.FAILED])
        )
        assert await wf.orchestrate(S.START) is expected


async def test_router_is_a_state_in_the_path_and_observers() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            return S.NEXT

    async def boom() -> S:
        raise RuntimeError("after router")

    rec = Recorder()
    wf = (
        cano.Workflow.bare()
        .register_router(S.START, Route())
        .register(S.NEXT, cano.task(config=MINIMAL)(boom))
        .add_exit_state(S.DONE)
        .with_observer(rec)
    )
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    assert rec.entered == ["START", "NEXT"]
    assert info.value.path == ["START", "NEXT"]
    assert rec.started[0] == Route.__qualname__


async def test_router_default_config_retries() -> None:
    calls = 0

    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            nonlocal calls
            calls += 1
            if calls < 2:
                raise ConnectionError("transient")
            return S.DONE

    assert Route().config().retry_mode.max_attempts == 4
    wf = cano.Workflow.bare().register_router(S.START, Route()).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.START) is S.DONE
    assert calls == 2


async def test_router_config_is_honoured() -> None:
    calls = 0

    class Route(cano.RouterTask[S]):
        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def route(self, res: cano.Resources) -> S:
            nonlocal calls
            calls += 1
            raise ConnectionError("down")

    wf = cano.Workflow.bare().register_router(S.START, Route()).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert calls == 1


async def test_router_name_defaults_to_qualname() -> None:
    class Route(cano.RouterTask[S]):
        async def route(self, res: cano.Resources) -> S:
            return S.DONE

    assert Route().name() == Route.__qualname__


# --------------------------------------------------------------------------------------------
# PollTask


class Script(cano.PollTask[S]):
    """Plays a script of poll outcomes; an exception instance in the script is raised."""

    def __init__(
        self,
        script: list[Any],
        *,
        policy: cano.PollErrorPolicy | None = None,
        config: cano.TaskConfig | None = None,
    ) -> None:
        self.script = list(script)
        self.polls = 0
        self._policy = policy
        self._config = config

    def config(self) -> cano.TaskConfig:
        return self._config if self._config is not None else super().config()

    def on_poll_error(self) -> cano.PollErrorPolicy:
        return self._policy if self._policy is not None else super().on_poll_error()

    async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
        self.polls += 1
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]


async def test_poll_until_ready() -> None:
    poller = Script([cano.Pending(), cano.Pending(0), cano.Pending(), cano.Ready(S.DONE)])
    assert await poll_workflow(poller).orchestrate(S.START) is S.DONE
    assert poller.polls == 4


async def test_poll_ready_immediately() -> None:
    poller = Script([cano.Ready(S.FAILED)])
    assert await poll_workflow(poller).orchestrate(S.START) is S.FAILED
    assert poller.polls == 1


async def test_poll_gets_the_resources() -> None:
    class Check(cano.PollTask[S]):
        async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
            store = res.get("store", cano.MemoryStore)
            n = store.get("n", 0) + 1
            store.put("n", n)
            return cano.Ready(S.DONE) if n == 3 else cano.Pending()

    store = cano.MemoryStore()
    res = cano.Resources().insert("store", store)
    wf = cano.Workflow(res).register(S.START, Check()).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.START) is S.DONE
    assert store.get("n") == 3


async def test_pending_delay_sleeps_between_polls() -> None:
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    class Check(cano.PollTask[S]):
        async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
            stamps.append(loop.time())
            return cano.Ready(S.DONE) if len(stamps) == 3 else cano.Pending(0.05)

    assert await poll_workflow(Check()).orchestrate(S.START) is S.DONE
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 2
    assert all(g >= 0.04 for g in gaps), gaps


async def test_pending_accepts_a_timedelta() -> None:
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    class Check(cano.PollTask[S]):
        async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
            stamps.append(loop.time())
            return cano.Ready(S.DONE) if len(stamps) == 2 else cano.Pending(timedelta(0, 0.05))

    assert await poll_workflow(Check()).orchestrate(S.START) is S.DONE
    assert stamps[1] - stamps[0] >= 0.04


def test_pending_default_delay_is_zero() -> None:
    assert cano.Pending().delay == 0
    assert cano.Pending(timedelta(milliseconds=250)).delay == pytest.approx(0.25)
    assert isinstance(cano.Pending(2).delay, float)


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan, timedelta(seconds=-1)])
def test_pending_rejects_negative_or_nan_delay(delay: Any) -> None:
    with pytest.raises(cano.ConfigurationError):
        cano.Pending(delay)


def test_ready_carries_its_state() -> None:
    assert cano.Ready(S.DONE).state is S.DONE


def test_poll_task_defaults() -> None:
    class P(cano.PollTask[S]):
        async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
            return cano.Ready(S.DONE)

    p = P()
    assert p.config().retry_mode.max_attempts == 1  # TaskConfig.minimal()
    assert p.on_poll_error() == cano.PollErrorPolicy.fail_fast()
    assert p.name() == P.__qualname__


async def test_poll_fail_fast_fails_on_the_first_error_without_retry() -> None:
    poller = Script([cano.Pending(), RuntimeError("poll broke"), cano.Ready(S.DONE)])
    with pytest.raises(cano.TaskError) as info:
        await poll_workflow(poller).orchestrate(S.START)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "poll broke"
    assert poller.polls == 2


async def test_poll_retry_on_error_tolerates_up_to_max_consecutive_errors() -> None:
    poller = Script(
        [RuntimeError("1"), RuntimeError("2"), cano.Ready(S.DONE)],
        policy=cano.PollErrorPolicy.retry_on_error(2),
    )
    assert await poll_workflow(poller).orchestrate(S.START) is S.DONE
    assert poller.polls == 3


async def test_poll_retry_on_error_fails_on_one_error_too_many() -> None:
    poller = Script(
        [RuntimeError("1"), RuntimeError("2"), RuntimeError("3"), cano.Ready(S.DONE)],
        policy=cano.PollErrorPolicy.retry_on_error(2),
    )
    with pytest.raises(cano.TaskError) as info:
        await poll_workflow(poller).orchestrate(S.START)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "3"
    assert poller.polls == 3


async def test_poll_retry_on_error_zero_is_fail_fast() -> None:
    poller = Script(
        [RuntimeError("1"), cano.Ready(S.DONE)],
        policy=cano.PollErrorPolicy.retry_on_error(0),
    )
    with pytest.raises(cano.TaskError):
        await poll_workflow(poller).orchestrate(S.START)
    assert poller.polls == 1


async def test_poll_pending_resets_the_error_count() -> None:
    poller = Script(
        [
            RuntimeError("a"),
            RuntimeError("b"),
            cano.Pending(),
            RuntimeError("c"),
            RuntimeError("d"),
            cano.Pending(),
            RuntimeError("e"),
            RuntimeError("f"),
            cano.Ready(S.DONE),
        ],
        policy=cano.PollErrorPolicy.retry_on_error(2),
    )
    assert await poll_workflow(poller).orchestrate(S.START) is S.DONE
    assert poller.polls == 9


async def test_poll_errors_are_counted_consecutively_not_in_total() -> None:
    # 3 errors in total but never more than 1 in a row: fine with max_errors=1.
    poller = Script(
        [
            RuntimeError("a"),
            cano.Pending(),
            RuntimeError("b"),
            cano.Pending(),
            RuntimeError("c"),
            cano.Ready(S.DONE),
        ],
        policy=cano.PollErrorPolicy.retry_on_error(1),
    )
    assert await poll_workflow(poller).orchestrate(S.START) is S.DONE


async def test_attempt_timeout_bounds_the_whole_poll_loop() -> None:
    polls = 0

    class Never(cano.PollTask[S]):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal().with_attempt_timeout(0.1)

        async def poll(self, res: cano.Resources) -> cano.Ready[S] | cano.Pending:
            nonlocal polls
            polls += 1
            return cano.Pending(0.01)

    with pytest.raises(cano.TaskTimeoutError) as info:
        await poll_workflow(Never()).orchestrate(S.START)
    assert isinstance(info.value, cano.TaskError)
    assert isinstance(info.value, TimeoutError)
    assert polls > 1  # the timeout covers several polls, not one


async def test_poll_retries_in_config_restart_the_loop() -> None:
    poller = Script(
        [cano.Pending(), RuntimeError("x"), cano.Pending(), cano.Ready(S.DONE)],
        config=cano.TaskConfig().with_fixed_retry(1, 0.001),
    )
    assert await poll_workflow(poller).orchestrate(S.START) is S.DONE
    assert poller.polls == 4


async def test_poll_ready_with_an_unregistered_state_is_a_workflow_error() -> None:
    poller = Script([cano.Ready(S.NEXT)])
    wf = cano.Workflow.bare().register(S.START, poller).add_exit_state(S.DONE)
    with pytest.raises(cano.WorkflowError):
        await wf.orchestrate(S.START)


async def test_poll_task_name_in_observers() -> None:
    rec = Recorder()
    await poll_workflow(Script([cano.Ready(S.DONE)])).with_observer(rec).orchestrate(S.START)
    assert rec.started == [Script.__qualname__]


# --------------------------------------------------------------------------------------------
# TimerTask


class Timer(cano.TimerTask[S]):
    def __init__(self, until: Any, *, after: S = S.DONE) -> None:
        self.until = until
        self.after = after
        self.waits = 0
        self.afters = 0
        self.after_at: float | None = None

    async def wait(self, res: cano.Resources) -> Any:
        self.waits += 1
        return self.until

    async def after_wait(self, res: cano.Resources) -> S:
        self.afters += 1
        self.after_at = asyncio.get_running_loop().time()
        return self.after


async def run_timer(timer: Timer) -> tuple[S, float]:
    """Runs ``timer`` and returns the state reached and how long before after_wait ran."""
    start = asyncio.get_running_loop().time()
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_states([S.DONE, S.FAILED])
    out = await wf.orchestrate(S.START)
    assert timer.after_at is not None
    return out, timer.after_at - start


async def test_timer_with_seconds() -> None:
    timer = Timer(0.05)
    out, waited = await run_timer(timer)
    assert out is S.DONE
    assert waited >= 0.04
    assert (timer.waits, timer.afters) == (1, 1)


async def test_timer_with_int_zero_does_not_wait() -> None:
    timer = Timer(0, after=S.FAILED)
    out, _ = await run_timer(timer)
    assert out is S.FAILED
    assert (timer.waits, timer.afters) == (1, 1)


async def test_timer_with_timedelta() -> None:
    timer = Timer(timedelta(milliseconds=50))
    out, waited = await run_timer(timer)
    assert out is S.DONE
    assert waited >= 0.04


async def test_timer_with_aware_datetime() -> None:
    timer = Timer(datetime.now(UTC) + timedelta(milliseconds=80))
    out, waited = await run_timer(timer)
    assert out is S.DONE
    assert waited >= 0.05


async def test_timer_with_aware_datetime_in_another_zone() -> None:
    from datetime import timezone

    tz = timezone(timedelta(hours=-5))
    timer = Timer(datetime.now(tz) + timedelta(milliseconds=80))
    out, waited = await run_timer(timer)
    assert out is S.DONE
    assert waited >= 0.05


async def test_timer_with_past_datetime_does_not_wait() -> None:
    timer = Timer(datetime.now(UTC) - timedelta(hours=1))
    out, _ = await run_timer(timer)
    assert out is S.DONE
    assert timer.afters == 1


def raised_configuration_error(err: BaseException) -> bool:
    """The run failed with a ConfigurationError, raised directly or as the task's cause."""
    return isinstance(err, cano.ConfigurationError) or isinstance(
        err.__cause__, cano.ConfigurationError
    )


async def test_timer_with_naive_datetime_is_a_configuration_error() -> None:
    timer = Timer(datetime.now() + timedelta(milliseconds=10))
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_state(S.DONE)
    with pytest.raises(cano.CanoError) as info:
        await wf.orchestrate(S.START)
    assert raised_configuration_error(info.value), repr(info.value)
    assert "naive" in str(info.value) or "naive" in str(info.value.__cause__)
    assert timer.afters == 0


@pytest.mark.parametrize("until", [-1.0, math.nan, timedelta(seconds=-1)])
async def test_timer_with_negative_or_nan_duration_is_a_configuration_error(until: Any) -> None:
    timer = Timer(until)
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_state(S.DONE)
    with pytest.raises(cano.CanoError) as info:
        await wf.orchestrate(S.START)
    assert raised_configuration_error(info.value), repr(info.value)
    assert timer.afters == 0


async def test_timer_error_in_wait_skips_after_wait() -> None:
    class Broken(Timer):
        async def wait(self, res: cano.Resources) -> Any:
            self.waits += 1
            raise RuntimeError("no clock")

    timer = Broken(0)
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert (timer.waits, timer.afters) == (1, 0)


async def test_timer_default_config_is_minimal() -> None:
    class Failing(Timer):
        async def after_wait(self, res: cano.Resources) -> S:
            self.afters += 1
            raise RuntimeError("after")

    timer = Failing(0)
    assert timer.config().retry_mode.max_attempts == 1
    assert timer.name() == Failing.__qualname__
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.START)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    assert (timer.waits, timer.afters) == (1, 1)


async def test_timer_attempt_timeout_caps_the_wait() -> None:
    class Long(Timer):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal().with_attempt_timeout(0.05)

    timer = Long(30)
    wf = cano.Workflow.bare().register(S.START, timer).add_exit_state(S.DONE)
    with pytest.raises(cano.TaskTimeoutError):
        await wf.orchestrate(S.START)
    assert timer.afters == 0


async def test_timer_after_wait_gets_the_resources() -> None:
    class Check(cano.TimerTask[S]):
        async def wait(self, res: cano.Resources) -> float:
            return res.get("delay", float)

        async def after_wait(self, res: cano.Resources) -> S:
            return res.get("next", S)

    res = cano.Resources().insert("delay", 0.01).insert("next", S.FAILED)
    wf = cano.Workflow(res).register(S.START, Check()).add_exit_states([S.DONE, S.FAILED])
    assert await wf.orchestrate(S.START) is S.FAILED
