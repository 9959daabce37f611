"""Total timeout, CancellationToken, and asyncio cancellation of a run."""

from __future__ import annotations

import asyncio
import enum
import threading
from typing import Any

import cano
import pytest

# --------------------------------------------------------------------------------------------
# helpers

GUARD = 10.0  # safety net so a broken engine fails a test instead of hanging it


class Step(enum.Enum):
    FIRST = enum.auto()
    WORK = enum.auto()
    DONE = enum.auto()


class Recorder(cano.WorkflowObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def _add(self, hook: str, *args: Any) -> None:
        self.events.append((hook, args))

    def on_state_enter(self, state: str) -> None:
        self._add("on_state_enter", state)

    def on_task_start(self, task_id: str) -> None:
        self._add("on_task_start", task_id)

    def on_task_success(self, task_id: str) -> None:
        self._add("on_task_success", task_id)

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self._add("on_task_failure", task_id, error)

    def on_retry(self, task_id: str, attempt: int) -> None:
        self._add("on_retry", task_id, attempt)

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._add("on_workflow_timeout", elapsed, limit)

    def on_cancelled(self, state: str) -> None:
        self._add("on_cancelled", state)

    def hooks(self, name: str) -> list[tuple[Any, ...]]:
        return [args for hook, args in self.events if hook == name]


class Blocking(cano.Task[Step]):
    """Signals ``started`` and then waits forever; records how it ended."""

    def __init__(self, *, name: str = "blocking", config: cano.TaskConfig | None = None) -> None:
        self._name = name
        self._config = config or cano.TaskConfig.minimal()
        self.started = asyncio.Event()
        self.log: list[str] = []
        self.attempts = 0

    def config(self) -> cano.TaskConfig:
        return self._config

    def name(self) -> str:
        return self._name

    async def run(self, res: cano.Resources) -> Step:
        self.attempts += 1
        self.log.append("start")
        try:
            self.started.set()
            await asyncio.Event().wait()
            return Step.DONE
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a while
            self.log.append("cleaned")


class Journal:
    """A lifecycle resource recording setup/teardown in a shared log."""

    def __init__(self, log: list[str], setup_delay: float = 0.0) -> None:
        self.log = log
        self.setup_delay = setup_delay

    async def setup(self) -> None:
        if self.setup_delay:
            await asyncio.sleep(self.setup_delay)
        self.log.append("setup")

    async def teardown(self) -> None:
        self.log.append("teardown")


def quick(next_state: Step = Step.DONE, *, name: str = "quick") -> cano.Task[Step]:
    async def run() -> Step:
        await asyncio.sleep(0)
        return next_state

    return cano.task(run, name=name, config=cano.TaskConfig.minimal())


def one_state(task: object, *observers: object, resources: cano.Resources | None = None) -> Any:
    wf: cano.Workflow[Step] = (
        cano.Workflow(resources) if resources is not None else cano.Workflow.bare()
    )
    wf.register(Step.WORK, task).add_exit_state(Step.DONE)
    for o in observers:
        wf.with_observer(o)
    return wf


def assert_not_cancelling() -> None:
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


# --------------------------------------------------------------------------------------------
# total timeout


async def test_total_timeout_raises_workflow_timeout_error() -> None:
    t = Blocking()
    wf = one_state(t).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError) as info:
        await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, cano.CanoError)
    assert type(err.elapsed) is float
    assert type(err.limit) is float
    assert err.limit == pytest.approx(0.05)
    assert 0.025 <= err.elapsed < GUARD  # seconds, not milliseconds
    assert err.state == "WORK"
    assert err.attempt == 0
    assert err.path == ["WORK"]


async def test_total_timeout_cancels_the_task_and_waits_for_its_cleanup() -> None:
    t = Blocking()
    wf = one_state(t).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD)
    # §13.9: the coroutine saw CancelledError and its finally (which awaits) finished
    assert t.log == ["start", "cancelled", "cleaned"]


async def test_total_timeout_fires_observer_once() -> None:
    rec = Recorder()
    wf = one_state(Blocking(name="blocker"), rec).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError) as info:
        await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD)
    fired = rec.hooks("on_workflow_timeout")
    assert len(fired) == 1
    elapsed, limit = fired[0]
    assert type(elapsed) is float and type(limit) is float
    assert limit == pytest.approx(0.05)
    assert elapsed == pytest.approx(info.value.elapsed, abs=0.05)
    assert [a[0] for a in rec.hooks("on_task_start")] == ["blocker"]
    assert [a[0] for a in rec.hooks("on_task_failure")] == ["blocker"]


async def test_total_timeout_interrupts_a_retry_sleep() -> None:
    calls = 0

    async def always_fails() -> Step:
        nonlocal calls
        calls += 1
        raise ValueError("nope")

    cfg = cano.TaskConfig().with_fixed_retry(5, 30.0)
    wf = one_state(cano.task(always_fails, config=cfg)).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD)
    assert calls == 1


async def test_run_finishing_before_the_deadline_is_unaffected() -> None:
    wf = one_state(quick()).with_total_timeout(0.05)
    assert await wf.orchestrate(Step.WORK) is Step.DONE
    assert_not_cancelling()
    # the finished run's deadline must not fire into the caller later
    await asyncio.sleep(0.1)
    assert await wf.orchestrate(Step.WORK) is Step.DONE
    await asyncio.sleep(0.1)


async def test_total_timeout_is_counted_after_resource_setup() -> None:
    log: list[str] = []
    res = cano.Resources().insert("journal", Journal(log, setup_delay=0.2))

    async def short() -> Step:
        await asyncio.sleep(0.01)
        return Step.DONE

    wf = one_state(cano.task(short, config=cano.TaskConfig.minimal()), resources=res)
    wf.with_total_timeout(0.1)
    assert await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD) is Step.DONE
    assert log == ["setup", "teardown"]


async def test_total_timeout_tears_resources_down_after_the_task_cleanup() -> None:
    log: list[str] = []
    res = cano.Resources().insert("journal", Journal(log))
    t = Blocking()
    t.log = log
    wf = one_state(t, resources=res).with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(wf.orchestrate(Step.WORK), GUARD)
    assert log == ["setup", "start", "cancelled", "cleaned", "teardown"]


# --------------------------------------------------------------------------------------------
# CancellationToken


def test_token_new_returns_token_and_handle() -> None:
    token, handle = cano.CancellationToken.new()
    assert isinstance(token, cano.CancellationToken)
    assert isinstance(handle, cano.CancellationHandle)
    assert not token.is_cancelled()
    assert not handle.is_cancelled()
    handle.cancel()
    handle.cancel()  # idempotent
    assert token.is_cancelled()
    assert handle.is_cancelled()


async def test_pre_cancelled_token_starts_no_task() -> None:
    rec = Recorder()
    log: list[str] = []
    res = cano.Resources().insert("journal", Journal(log))
    t = Blocking()
    wf = one_state(t, rec, resources=res)
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await asyncio.wait_for(wf.orchestrate(Step.WORK, cancel=token), GUARD)
    assert t.attempts == 0
    assert info.value.attempt == 0
    assert rec.hooks("on_cancelled") == [("WORK",)]
    assert rec.hooks("on_task_start") == []
    assert log.count("setup") == log.count("teardown")


async def test_cancel_from_another_coroutine_mid_task() -> None:
    rec = Recorder()
    t = Blocking(name="blocker")
    wf = one_state(t, rec)
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(wf.orchestrate(Step.WORK, cancel=token))
    await asyncio.wait_for(t.started.wait(), GUARD)
    assert not run.done()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await asyncio.wait_for(run, GUARD)
    err = info.value
    assert err.attempt == 0
    assert err.state == "WORK"
    assert err.path == ["WORK"]
    assert t.log == ["start", "cancelled", "cleaned"]
    assert rec.hooks("on_cancelled") == [("WORK",)]


async def test_cancel_from_inside_the_task() -> None:
    token, handle = cano.CancellationToken.new()
    log: list[str] = []

    async def self_cancelling() -> Step:
        try:
            handle.cancel()
            await asyncio.Event().wait()
            return Step.DONE
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    wf = one_state(cano.task(self_cancelling, config=cano.TaskConfig.minimal()))
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await asyncio.wait_for(wf.orchestrate(Step.WORK, cancel=token), GUARD)
    assert info.value.attempt == 0
    assert log == ["cancelled", "finally"]


async def test_cancel_lands_while_the_task_routes_to_an_exit_state() -> None:
    # The cancellation check precedes the exit check at the next state boundary.
    rec = Recorder()
    token, handle = cano.CancellationToken.new()

    async def cancel_then_finish() -> Step:
        handle.cancel()
        return Step.DONE

    wf = one_state(cano.task(cancel_then_finish, config=cano.TaskConfig.minimal()), rec)
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(wf.orchestrate(Step.WORK, cancel=token), GUARD)
    assert len(rec.hooks("on_cancelled")) == 1


async def test_cancel_between_states_prevents_the_next_task() -> None:
    token, handle = cano.CancellationToken.new()
    second = Blocking()

    async def first() -> Step:
        handle.cancel()
        return Step.WORK

    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.FIRST, cano.task(first, config=cano.TaskConfig.minimal()))
    wf.register(Step.WORK, second).add_exit_state(Step.DONE)
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(wf.orchestrate(Step.FIRST, cancel=token), GUARD)
    assert second.attempts == 0


async def test_cancel_from_another_thread_wakes_the_run() -> None:
    rec = Recorder()
    log: list[str] = []
    res = cano.Resources().insert("journal", Journal(log))
    t = Blocking()
    t.log = log
    wf = one_state(t, rec, resources=res)
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(wf.orchestrate(Step.WORK, cancel=token))
    await asyncio.wait_for(t.started.wait(), GUARD)
    thread = threading.Thread(target=handle.cancel)
    thread.start()
    thread.join()
    with pytest.raises(cano.WorkflowCancelledError) as info:
        await asyncio.wait_for(run, GUARD)
    assert info.value.attempt == 0
    assert log == ["setup", "start", "cancelled", "cleaned", "teardown"]
    assert rec.hooks("on_cancelled") == [("WORK",)]


async def test_cancel_is_idempotent_during_a_run() -> None:
    rec = Recorder()
    t = Blocking()
    wf = one_state(t, rec)
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(wf.orchestrate(Step.WORK, cancel=token))
    await asyncio.wait_for(t.started.wait(), GUARD)
    handle.cancel()
    handle.cancel()
    await asyncio.sleep(0)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(run, GUARD)
    assert rec.hooks("on_cancelled") == [("WORK",)]
    assert t.log.count("cancelled") == 1


async def test_cancel_during_retry_sleep() -> None:
    calls = 0

    async def failing() -> Step:
        nonlocal calls
        calls += 1
        raise ValueError("again")

    token, handle = cano.CancellationToken.new()
    wf = one_state(cano.task(failing, config=cano.TaskConfig().with_fixed_retry(3, 30.0)))
    run = asyncio.create_task(wf.orchestrate(Step.WORK, cancel=token))
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls == 1
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(run, GUARD)
    assert calls == 1


async def test_unused_token_does_not_affect_a_run() -> None:
    token, _handle = cano.CancellationToken.new()
    assert await one_state(quick()).orchestrate(Step.WORK, cancel=token) is Step.DONE


# --------------------------------------------------------------------------------------------
# asyncio cancellation of the task awaiting the run


async def test_asyncio_cancel_reaches_the_user_coroutine_then_propagates() -> None:
    log: list[str] = []
    res = cano.Resources().insert("journal", Journal(log))
    t = Blocking()
    t.log = log
    wf = one_state(t, resources=res)
    run = asyncio.create_task(wf.orchestrate(Step.WORK))
    await asyncio.wait_for(t.started.wait(), GUARD)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()
    assert log == ["setup", "start", "cancelled", "cleaned", "teardown"]


async def test_asyncio_cancel_with_message_during_retry_sleep() -> None:
    calls = 0

    async def failing() -> Step:
        nonlocal calls
        calls += 1
        raise ValueError("again")

    wf = one_state(cano.task(failing, config=cano.TaskConfig().with_fixed_retry(3, 30.0)))
    run = asyncio.create_task(wf.orchestrate(Step.WORK))
    for _ in range(20):
        await asyncio.sleep(0)
    run.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()
    assert calls == 1


async def test_asyncio_cancel_is_not_turned_into_an_engine_error() -> None:
    t = Blocking(config=cano.TaskConfig().with_fixed_retry(3, 0.001))
    token, _handle = cano.CancellationToken.new()
    wf = one_state(t).with_total_timeout(GUARD)
    run = asyncio.create_task(wf.orchestrate(Step.WORK, cancel=token))
    await asyncio.wait_for(t.started.wait(), GUARD)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()
    assert t.attempts == 1  # not retried


async def test_outer_asyncio_timeout_still_raises_timeout_error() -> None:
    t = Blocking()
    wf = one_state(t)
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.05):
            await wf.orchestrate(Step.WORK)
    assert not isinstance(info.value, cano.CanoError)
    assert t.log == ["start", "cancelled", "cleaned"]
    assert_not_cancelling()
    await asyncio.sleep(0.01)  # the task is usable afterwards


async def test_outer_timeout_around_a_run_with_engine_timeouts() -> None:
    t = Blocking(config=cano.TaskConfig.minimal().with_attempt_timeout(GUARD))
    wf = one_state(t).with_total_timeout(GUARD)
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.05):
            await wf.orchestrate(Step.WORK)
    assert not isinstance(info.value, cano.CanoError)
    assert_not_cancelling()


async def test_outer_wait_for_raises_timeout_error() -> None:
    t = Blocking()
    with pytest.raises(TimeoutError) as info:
        await asyncio.wait_for(one_state(t).orchestrate(Step.WORK), 0.05)
    assert not isinstance(info.value, cano.CanoError)
    assert t.log == ["start", "cancelled", "cleaned"]


async def test_engine_timeouts_inside_an_outer_timeout_do_not_trip_it() -> None:
    attempt_timeout = Blocking(config=cano.TaskConfig.minimal().with_attempt_timeout(0.02))
    total_timeout = Blocking()
    async with asyncio.timeout(GUARD) as outer:
        with pytest.raises(cano.TaskTimeoutError):
            await one_state(attempt_timeout).orchestrate(Step.WORK)
        assert_not_cancelling()
        with pytest.raises(cano.WorkflowTimeoutError):
            await one_state(total_timeout).with_total_timeout(0.02).orchestrate(Step.WORK)
        assert_not_cancelling()
        await asyncio.sleep(0.01)
    assert not outer.expired()


async def test_caller_cancel_wins_over_an_engine_attempt_timeout() -> None:
    # A real cancel of the caller must not be swallowed as if it were the engine's timeout.
    t = Blocking(config=cano.TaskConfig().with_fixed_retry(3, 0.001).with_attempt_timeout(GUARD))
    run = asyncio.create_task(one_state(t).orchestrate(Step.WORK))
    await asyncio.wait_for(t.started.wait(), GUARD)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()
    assert t.attempts == 1


# --------------------------------------------------------------------------------------------
# observers on cancellation


def assert_balanced(rec: Recorder) -> None:
    started = [a[0] for a in rec.hooks("on_task_start")]
    ended = [a[0] for a in rec.hooks("on_task_success")] + [
        a[0] for a in rec.hooks("on_task_failure")
    ]
    assert sorted(started) == sorted(ended), rec.events


async def test_token_cancel_balances_task_events() -> None:
    rec = Recorder()
    t = Blocking(name="blocker")
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(one_state(t, rec).orchestrate(Step.WORK, cancel=token))
    await asyncio.wait_for(t.started.wait(), GUARD)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(run, GUARD)
    assert [a[0] for a in rec.hooks("on_task_start")] == ["blocker"]
    assert [a[0] for a in rec.hooks("on_task_failure")] == ["blocker"]
    assert_balanced(rec)


async def test_asyncio_cancel_balances_task_events() -> None:
    rec = Recorder()
    t = Blocking(name="blocker")
    run = asyncio.create_task(one_state(t, rec).orchestrate(Step.WORK))
    await asyncio.wait_for(t.started.wait(), GUARD)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [a[0] for a in rec.hooks("on_task_start")] == ["blocker"]
    assert [a[0] for a in rec.hooks("on_task_failure")] == ["blocker"]
    assert_balanced(rec)


async def test_total_timeout_balances_task_events() -> None:
    rec = Recorder()
    t = Blocking(name="blocker")
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(
            one_state(t, rec).with_total_timeout(0.02).orchestrate(Step.WORK), GUARD
        )
    assert_balanced(rec)
