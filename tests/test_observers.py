"""Observer hooks (API.md §9, §13.10): which fire, when, in what order, and isolation."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

import cano
import pytest

# --------------------------------------------------------------------------------------------
# helpers

GUARD = 10.0
MINIMAL = cano.TaskConfig.minimal()
FAST = cano.TaskConfig().with_fixed_retry(2, 0.001)


class Step(enum.Enum):
    FETCH = enum.auto()
    ROUTE = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class Recorder:
    """Duck-typed observer recording every hook as ``(hook, args)``."""

    def __init__(self, journal: list[Any] | None = None, tag: str = "") -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.journal = journal
        self.tag = tag

    def _add(self, name: str, *args: Any) -> None:
        self.events.append((name, args))
        if self.journal is not None:
            self.journal.append((self.tag, name, args))

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

    def on_circuit_open(self, task_id: str) -> None:
        self._add("on_circuit_open", task_id)

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self._add("on_checkpoint", workflow_id, sequence)

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self._add("on_resume", workflow_id, sequence)

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._add("on_workflow_timeout", elapsed, limit)

    def on_cancelled(self, state: str) -> None:
        self._add("on_cancelled", state)

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self._add("on_checkpoint_clear_failed", workflow_id, error)

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        self._add("on_unknown_resume_state", workflow_id, sequence, label)

    def hooks(self, name: str) -> list[tuple[Any, ...]]:
        return [args for hook, args in self.events if hook == name]

    def names(self) -> list[str]:
        return [hook for hook, _ in self.events]


class Goto(cano.Task[Step]):
    def __init__(self, target: Step, name: str, config: cano.TaskConfig = MINIMAL) -> None:
        self.target = target
        self._name = name
        self._config = config

    def name(self) -> str:
        return self._name

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> Step:
        await asyncio.sleep(0)
        return self.target


class Fail(cano.Task[Step]):
    """Raises ``errors[n]`` on attempt n (0-based) and succeeds past the end of the list."""

    def __init__(self, errors: list[BaseException], name: str, config: cano.TaskConfig) -> None:
        self.errors = errors
        self._name = name
        self._config = config
        self.attempts = 0

    def name(self) -> str:
        return self._name

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> Step:
        self.attempts += 1
        if self.attempts <= len(self.errors):
            raise self.errors[self.attempts - 1]
        return Step.DONE


class Router(cano.RouterTask[Step]):
    def config(self) -> cano.TaskConfig:
        return MINIMAL

    async def route(self, res: cano.Resources) -> Step:
        return Step.PARSE


class Hang(cano.Task[Step]):
    def __init__(self, name: str = "hang", config: cano.TaskConfig = MINIMAL) -> None:
        self._name = name
        self._config = config
        self.started = asyncio.Event()

    def name(self) -> str:
        return self._name

    def config(self) -> cano.TaskConfig:
        return self._config

    async def run(self, res: cano.Resources) -> Step:
        self.started.set()
        await asyncio.Event().wait()
        return Step.DONE


def pipeline(*observers: object) -> cano.Workflow[Step]:
    """FETCH (task) -> ROUTE (router) -> PARSE (task) -> DONE (exit)."""
    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.FETCH, Goto(Step.ROUTE, "fetch"))
    wf.register_router(Step.ROUTE, Router())
    wf.register(Step.PARSE, Goto(Step.DONE, "parse"))
    wf.add_exit_states([Step.DONE, Step.FAILED])
    for o in observers:
        wf.with_observer(o)
    return wf


def one_state(task: object, *observers: object) -> cano.Workflow[Step]:
    wf: cano.Workflow[Step] = cano.Workflow.bare()
    wf.register(Step.FETCH, task).add_exit_state(Step.DONE)
    for o in observers:
        wf.with_observer(o)
    return wf


def cano_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if (r.name == "cano" or r.name.startswith("cano.")) and r.levelno >= logging.WARNING
    ]


# --------------------------------------------------------------------------------------------
# which hooks fire


async def test_state_enter_fires_for_every_state_including_router_and_exit() -> None:
    rec = Recorder()
    assert await pipeline(rec).orchestrate(Step.FETCH) is Step.DONE
    assert rec.hooks("on_state_enter") == [("FETCH",), ("ROUTE",), ("PARSE",), ("DONE",)]


async def test_starting_at_an_exit_state_enters_it() -> None:
    rec = Recorder()
    assert await pipeline(rec).orchestrate(Step.DONE) is Step.DONE
    assert rec.events == [("on_state_enter", ("DONE",))]


async def test_state_labels_for_str_and_int_states() -> None:
    rec = Recorder()

    async def go() -> Any:
        return 7

    wf: cano.Workflow[Any] = cano.Workflow.bare()
    wf.register("begin", cano.task(go, config=MINIMAL)).add_exit_state(7).with_observer(rec)
    assert await wf.orchestrate("begin") == 7
    assert rec.hooks("on_state_enter") == [("begin",), ("7",)]


async def test_event_order_for_a_small_run() -> None:
    rec = Recorder()
    wf: cano.Workflow[Step] = cano.Workflow.bare().with_observer(rec)
    wf.register(Step.FETCH, Goto(Step.PARSE, "fetch"))
    wf.register(Step.PARSE, Goto(Step.DONE, "parse")).add_exit_state(Step.DONE)
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert rec.events == [
        ("on_state_enter", ("FETCH",)),
        ("on_task_start", ("fetch",)),
        ("on_task_success", ("fetch",)),
        ("on_state_enter", ("PARSE",)),
        ("on_task_start", ("parse",)),
        ("on_task_success", ("parse",)),
        ("on_state_enter", ("DONE",)),
    ]


async def test_task_events_of_a_pipeline_with_a_router() -> None:
    rec = Recorder()
    await pipeline(rec).orchestrate(Step.FETCH)
    named = [(h, a) for h, a in rec.events if a and a[0] in ("fetch", "parse")]
    assert named == [
        ("on_task_start", ("fetch",)),
        ("on_task_success", ("fetch",)),
        ("on_task_start", ("parse",)),
        ("on_task_success", ("parse",)),
    ]
    # FETCH's task finished before ROUTE was entered
    assert rec.events.index(("on_task_success", ("fetch",))) < rec.events.index(
        ("on_state_enter", ("ROUTE",))
    )


async def test_default_task_names_are_qualnames() -> None:
    rec = Recorder()

    class Plain(cano.Task[Step]):
        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> Step:
            return Step.DONE

    async def plain_function() -> Step:
        return Step.DONE

    await one_state(Plain(), rec).orchestrate(Step.FETCH)
    await one_state(cano.task(plain_function, config=MINIMAL), rec).orchestrate(Step.FETCH)
    assert rec.hooks("on_task_start") == [(Plain.__qualname__,), (plain_function.__qualname__,)]


async def test_task_failure_receives_task_error() -> None:
    rec = Recorder()
    boom = ValueError("boom")
    with pytest.raises(cano.TaskError):
        await one_state(Fail([boom], "once", MINIMAL), rec).orchestrate(Step.FETCH)
    assert rec.names() == ["on_state_enter", "on_task_start", "on_task_failure"]
    ((task_id, err),) = rec.hooks("on_task_failure")
    assert task_id == "once"
    assert type(err) is cano.TaskError
    assert err.__cause__ is boom


async def test_task_failure_receives_retry_exhausted_error() -> None:
    rec = Recorder()
    errors: list[BaseException] = [ValueError("1"), ValueError("2"), ValueError("3")]
    with pytest.raises(cano.RetryExhaustedError):
        await one_state(Fail(errors, "flaky", FAST), rec).orchestrate(Step.FETCH)
    ((task_id, err),) = rec.hooks("on_task_failure")
    assert task_id == "flaky"
    assert isinstance(err, cano.RetryExhaustedError)
    assert err.attempts == 3
    assert err.__cause__ is errors[-1]
    assert rec.hooks("on_retry") == [("flaky", 1), ("flaky", 2)]
    assert rec.names() == [
        "on_state_enter",
        "on_task_start",
        "on_retry",
        "on_retry",
        "on_task_failure",
    ]


async def test_task_failure_receives_task_timeout_error() -> None:
    rec = Recorder()
    with pytest.raises(cano.TaskTimeoutError):
        await one_state(Hang("slow", MINIMAL.with_attempt_timeout(0.01)), rec).orchestrate(
            Step.FETCH
        )
    ((task_id, err),) = rec.hooks("on_task_failure")
    assert task_id == "slow"
    assert isinstance(err, cano.TaskTimeoutError)


async def test_retry_then_success_events() -> None:
    rec = Recorder()
    task = Fail([ValueError("1")], "flaky", FAST)
    assert await one_state(task, rec).orchestrate(Step.FETCH) is Step.DONE
    assert rec.events == [
        ("on_state_enter", ("FETCH",)),
        ("on_task_start", ("flaky",)),
        ("on_retry", ("flaky", 1)),
        ("on_task_success", ("flaky",)),
        ("on_state_enter", ("DONE",)),
    ]


async def test_workflow_timeout_hook() -> None:
    rec = Recorder()
    wf = one_state(Hang("hang"), rec).with_total_timeout(0.02)
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(wf.orchestrate(Step.FETCH), GUARD)
    ((elapsed, limit),) = rec.hooks("on_workflow_timeout")
    assert type(elapsed) is float and type(limit) is float
    assert limit == pytest.approx(0.02)
    assert elapsed > 0
    ((task_id, _err),) = rec.hooks("on_task_failure")
    assert task_id == "hang"


async def test_cancelled_hook_fires_once_with_the_state() -> None:
    rec = Recorder()
    task = Hang("hang")
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(one_state(task, rec).orchestrate(Step.FETCH, cancel=token))
    await asyncio.wait_for(task.started.wait(), GUARD)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await asyncio.wait_for(run, GUARD)
    assert rec.hooks("on_cancelled") == [("FETCH",)]
    assert [a[0] for a in rec.hooks("on_task_start")] == ["hang"]
    assert [a[0] for a in rec.hooks("on_task_failure")] == ["hang"]


async def test_pre_cancelled_run_fires_only_cancelled() -> None:
    rec = Recorder()
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await one_state(Hang(), rec).orchestrate(Step.FETCH, cancel=token)
    assert rec.hooks("on_cancelled") == [("FETCH",)]
    assert rec.hooks("on_task_start") == []


async def test_no_checkpoint_hooks_without_a_store() -> None:
    rec = Recorder()
    await pipeline(rec).orchestrate(Step.FETCH)
    assert not {"on_checkpoint", "on_resume", "on_checkpoint_clear_failed"} & set(rec.names())


# --------------------------------------------------------------------------------------------
# several observers, duck typing, subclassing


async def test_several_observers_are_called_in_registration_order() -> None:
    journal: list[Any] = []
    observers = [Recorder(journal, tag) for tag in ("first", "second", "third")]
    await pipeline(*observers).orchestrate(Step.FETCH)
    events = observers[0].events
    assert events, "no events"
    for o in observers[1:]:
        assert o.events == events
    expected = [(tag, hook, args) for hook, args in events for tag in ("first", "second", "third")]
    assert journal == expected


async def test_with_observer_is_additive() -> None:
    a, b = Recorder(), Recorder()
    wf = pipeline()
    assert wf.with_observer(a) is wf
    wf.with_observer(b)
    await wf.orchestrate(Step.FETCH)
    assert a.events and a.events == b.events


async def test_duck_typed_observers_with_only_some_hooks() -> None:
    entered: list[str] = []
    failures: list[str] = []

    class OnlyEnter:
        def on_state_enter(self, state: str) -> None:
            entered.append(state)

    class OnlyFailure:
        def on_task_failure(self, task_id: str, error: BaseException) -> None:
            failures.append(task_id)

    class Nothing:
        pass

    wf = pipeline(OnlyEnter(), OnlyFailure(), Nothing())
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert entered == ["FETCH", "ROUTE", "PARSE", "DONE"]
    assert failures == []

    wf2 = one_state(Fail([ValueError()], "bad", MINIMAL), OnlyEnter(), OnlyFailure(), Nothing())
    with pytest.raises(cano.TaskError):
        await wf2.orchestrate(Step.FETCH)
    assert failures == ["bad"]


async def test_subclass_overriding_some_hooks() -> None:
    seen: list[tuple[str, int]] = []

    class RetryWatcher(cano.WorkflowObserver):
        def on_retry(self, task_id: str, attempt: int) -> None:
            seen.append((task_id, attempt))

    wf = one_state(Fail([ValueError(), ValueError()], "flaky", FAST), RetryWatcher())
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert seen == [("flaky", 1), ("flaky", 2)]


def test_base_observer_hooks_are_no_ops() -> None:
    o = cano.WorkflowObserver()
    o.on_state_enter("A")
    o.on_task_start("t")
    o.on_task_success("t")
    o.on_task_failure("t", cano.TaskError("x"))
    o.on_retry("t", 1)
    o.on_circuit_open("t")
    o.on_checkpoint("id", 0)
    o.on_resume("id", 0)
    o.on_workflow_timeout(1.0, 1.0)
    o.on_cancelled("A")
    o.on_checkpoint_clear_failed("id", cano.CheckpointError("x"))
    o.on_unknown_resume_state("id", 0, "A")


async def test_observer_added_after_orchestrate_does_not_see_that_run() -> None:
    early, late = Recorder(), Recorder()
    wf = pipeline(early)
    run = wf.orchestrate(Step.FETCH)
    wf.with_observer(late)
    assert await run is Step.DONE
    assert early.events
    assert late.events == []
    await wf.orchestrate(Step.FETCH)
    assert late.events == early.events[: len(late.events)]
    assert late.events


# --------------------------------------------------------------------------------------------
# an observer that raises is logged and ignored (§13.10)


class Raising:
    """Raises from the named hooks and records every call."""

    def __init__(self, *failing: str) -> None:
        self.failing = set(failing)
        self.calls: list[str] = []

    def _call(self, hook: str) -> None:
        self.calls.append(hook)
        if hook in self.failing:
            raise RuntimeError(f"observer broke in {hook}")

    def on_state_enter(self, state: str) -> None:
        self._call("on_state_enter")

    def on_task_start(self, task_id: str) -> None:
        self._call("on_task_start")

    def on_task_success(self, task_id: str) -> None:
        self._call("on_task_success")

    def on_task_failure(self, task_id: str, error: BaseException) -> None:
        self._call("on_task_failure")

    def on_retry(self, task_id: str, attempt: int) -> None:
        self._call("on_retry")

    def on_workflow_timeout(self, elapsed: float, limit: float) -> None:
        self._call("on_workflow_timeout")

    def on_cancelled(self, state: str) -> None:
        self._call("on_cancelled")


async def test_raising_observer_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cano")
    bad = Raising("on_state_enter", "on_task_start", "on_task_success")
    after = Recorder()
    assert await pipeline(bad, after).orchestrate(Step.FETCH) is Step.DONE
    # the observer registered after the raising one still saw everything
    assert after.hooks("on_state_enter") == [("FETCH",), ("ROUTE",), ("PARSE",), ("DONE",)]
    records = cano_errors(caplog)
    assert len(records) >= bad.calls.count("on_state_enter")
    assert any("observer broke" in (r.getMessage() + str(r.exc_info)) for r in records)


async def test_raising_on_retry_is_logged_and_the_retry_still_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cano")
    bad = Raising("on_retry")
    after = Recorder()
    task = Fail([ValueError("1"), ValueError("2")], "flaky", FAST)
    assert await one_state(task, bad, after).orchestrate(Step.FETCH) is Step.DONE
    assert task.attempts == 3
    assert bad.calls.count("on_retry") == 2
    assert after.hooks("on_retry") == [("flaky", 1), ("flaky", 2)]
    assert len(cano_errors(caplog)) >= 2


async def test_raising_on_task_failure_keeps_the_run_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cano")
    boom = KeyError("k")
    bad = Raising("on_task_failure")
    with pytest.raises(cano.TaskError) as info:
        await one_state(Fail([boom], "t", MINIMAL), bad).orchestrate(Step.FETCH)
    assert info.value.__cause__ is boom
    assert bad.calls.count("on_task_failure") == 1
    assert cano_errors(caplog)


async def test_raising_timeout_and_cancel_hooks_keep_the_run_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cano")
    bad = Raising("on_workflow_timeout", "on_cancelled", "on_task_failure")
    wf = one_state(Hang(), bad).with_total_timeout(0.02)
    with pytest.raises(cano.WorkflowTimeoutError):
        await asyncio.wait_for(wf.orchestrate(Step.FETCH), GUARD)
    assert bad.calls.count("on_workflow_timeout") == 1

    token, handle = cano.CancellationToken.new()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await one_state(Hang(), bad).orchestrate(Step.FETCH, cancel=token)
    assert bad.calls.count("on_cancelled") == 1
    assert len(cano_errors(caplog)) >= 2
