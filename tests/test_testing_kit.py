"""cano.testing (API.md §9, §13.11): recording observer, fixtures, failure injection."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import cano
import cano.observer
import cano.testing
import pytest
from cano.testing import (
    InMemoryCheckpointStore,
    PanicOnAttempt,
    RecordingObserver,
    TestResources,
    assert_compensation_ran,
    panic_on_attempt,
)

FAST = cano.TaskConfig().with_fixed_retry(3, 0)
MINIMAL = cano.TaskConfig.minimal()


class Step(enum.Enum):
    FETCH = enum.auto()
    PARSE = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


async def parse(res: cano.Resources) -> Step:
    return Step.DONE


def flow(fetch: cano.Task[Step], rec: RecordingObserver) -> cano.Workflow[Step]:
    return (
        cano.Workflow.bare()
        .register(Step.FETCH, fetch)
        .register(Step.PARSE, cano.task(config=MINIMAL)(parse))
        .add_exit_states([Step.DONE, Step.FAILED])
        .with_observer(rec)
    )


# --------------------------------------------------------------------------------------------
# module surface


def test_not_reexported_at_top_level_but_importable() -> None:
    assert not hasattr(cano, "RecordingObserver")
    assert "testing" not in cano.__all__
    assert InMemoryCheckpointStore is cano.InMemoryCheckpointStore
    assert set(cano.testing.__all__) >= {
        "RecordingObserver",
        "InMemoryCheckpointStore",
        "TestResources",
        "panic_on_attempt",
        "assert_compensation_ran",
    }


# --------------------------------------------------------------------------------------------
# RecordingObserver


async def test_recording_observer_records_hooks_in_order() -> None:
    rec = RecordingObserver()
    flaky = panic_on_attempt(2, Step.PARSE).with_config(FAST)
    assert await flow(flaky, rec).orchestrate(Step.FETCH) is Step.DONE

    assert rec.events == [
        ("on_run_start", (None,)),
        ("on_state_enter", ("FETCH",)),
        ("on_task_start", ("PanicOnAttempt",)),
        ("on_retry", ("PanicOnAttempt", 1)),
        ("on_retry", ("PanicOnAttempt", 2)),
        ("on_task_success", ("PanicOnAttempt",)),
        ("on_state_enter", ("PARSE",)),
        ("on_task_start", ("parse",)),
        ("on_task_success", ("parse",)),
        ("on_state_enter", ("DONE",)),
        ("on_run_finish", ("DONE", None)),
    ]
    assert rec.states_entered == ["FETCH", "PARSE", "DONE"]
    assert rec.events_named("on_retry") == [("PanicOnAttempt", 1), ("PanicOnAttempt", 2)]
    rec.assert_path([Step.FETCH, Step.PARSE, Step.DONE])
    rec.assert_path(["FETCH", "PARSE", "DONE"])
    rec.assert_completed_with(Step.DONE)
    rec.assert_completed_with("DONE")


async def test_clear_and_take() -> None:
    rec = RecordingObserver()
    wf = flow(panic_on_attempt(0, Step.PARSE), rec)
    await wf.orchestrate(Step.FETCH)
    assert rec.events
    rec.clear()
    assert rec.events == []
    assert rec.states_entered == []
    await wf.orchestrate(Step.FETCH)
    taken = rec.take()
    assert taken[:2] == [("on_run_start", (None,)), ("on_state_enter", ("FETCH",))]
    assert rec.events == []


def test_assert_path_reports_first_difference() -> None:
    rec = RecordingObserver()
    for label in ("FETCH", "PARSE", "FAILED"):
        rec.on_state_enter(label)
    with pytest.raises(AssertionError) as info:
        rec.assert_path([Step.FETCH, Step.PARSE, Step.DONE])
    msg = str(info.value)
    assert "differs at step 2: expected 'DONE', got 'FAILED'" in msg
    assert "expected: ['FETCH', 'PARSE', 'DONE']" in msg
    assert "actual:   ['FETCH', 'PARSE', 'FAILED']" in msg

    with pytest.raises(AssertionError, match="step 3: expected 'DONE', got nothing more"):
        rec.assert_path(["FETCH", "PARSE", "FAILED", "DONE"])
    with pytest.raises(AssertionError, match="step 1: expected nothing more, got 'PARSE'"):
        rec.assert_path(["FETCH"])


async def test_assert_completed_with_rejects_a_failed_run() -> None:
    rec = RecordingObserver()
    wf = flow(panic_on_attempt(5, Step.PARSE).with_config(MINIMAL), rec)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step.FETCH)
    # The run stopped in FETCH, but FETCH is not where it completed.
    with pytest.raises(AssertionError, match="did not complete there: on_task_start"):
        rec.assert_completed_with(Step.FETCH)
    with pytest.raises(AssertionError, match="last state entered was 'FETCH'"):
        rec.assert_completed_with(Step.DONE)
    failure = rec.events_named("on_task_failure")
    assert len(failure) == 1
    assert isinstance(failure[0][1], cano.TaskError)
    assert isinstance(failure[0][1].__cause__, RuntimeError)


def test_assert_completed_with_nothing_recorded() -> None:
    with pytest.raises(AssertionError, match="no state was entered"):
        RecordingObserver().assert_completed_with(Step.DONE)


async def test_records_timeout_and_cancellation_hooks() -> None:
    class Hang(cano.Task[Step]):
        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> Step:
            await asyncio.Event().wait()
            return Step.DONE

    rec = RecordingObserver()
    wf = flow(Hang(), rec).with_total_timeout(0.02)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(Step.FETCH)
    ((elapsed, limit),) = rec.events_named("on_workflow_timeout")
    assert limit == pytest.approx(0.02)
    assert elapsed >= limit

    rec2 = RecordingObserver()
    token, handle = cano.CancellationToken.new()
    asyncio.get_running_loop().call_later(0.02, handle.cancel)
    with pytest.raises(cano.WorkflowCancelledError):
        await flow(Hang(), rec2).orchestrate(Step.FETCH, cancel=token)
    assert rec2.events_named("on_cancelled") == [("FETCH",)]


async def test_records_circuit_breaker_rejections() -> None:
    breaker = cano.CircuitBreaker(cano.CircuitPolicy(failure_threshold=1, reset_timeout=60))
    guarded = panic_on_attempt(5, Step.PARSE).with_config(MINIMAL.with_circuit_breaker(breaker))
    rec = RecordingObserver()
    wf = flow(guarded, rec)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step.FETCH)
    rec.clear()
    with pytest.raises(cano.CircuitOpenError):
        await wf.orchestrate(Step.FETCH)
    assert [hook for hook, _ in rec.events] == [
        "on_run_start",
        "on_state_enter",
        "on_task_start",
        "on_circuit_open",
        "on_task_failure",
        "on_run_finish",
    ]
    assert isinstance(rec.events_named("on_task_failure")[0][1], cano.CircuitOpenError)


def test_records_scheduler_flow_hooks() -> None:
    rec = RecordingObserver()
    rec.on_flow_start("nightly", 1)
    rec.on_flow_finish("nightly", "failed", 0.5)
    rec.on_flow_backoff("nightly", 1, 2.0)
    rec.on_flow_tripped("nightly", 3)
    assert rec.events == [
        ("on_flow_start", ("nightly", 1)),
        ("on_flow_finish", ("nightly", "failed", 0.5)),
        ("on_flow_backoff", ("nightly", 1, 2.0)),
        ("on_flow_tripped", ("nightly", 3)),
    ]
    # Every hook of the observer protocol is recorded.
    assert all(
        getattr(RecordingObserver, hook) is not getattr(cano.WorkflowObserver, hook)
        for hook in cano.observer.HOOKS
    )


async def test_state_coverage_assertions() -> None:
    rec = RecordingObserver()
    wf = flow(panic_on_attempt(0, Step.PARSE), rec)
    await wf.orchestrate(Step.FETCH)
    rec.assert_registered_states_entered(wf)  # FAILED is exit-only: not required
    rec.assert_all_states_entered([Step.DONE, "FETCH"])
    with pytest.raises(AssertionError, match=r"states never entered: \['FAILED'\]"):
        rec.assert_all_states_entered([Step.FAILED, Step.DONE])


async def test_checkpoint_and_resume_recorded_with_in_memory_store() -> None:
    store = InMemoryCheckpointStore()
    crash = panic_on_attempt(1, Step.DONE).with_config(MINIMAL)

    async def fetch() -> Step:
        return Step.PARSE

    def build(rec: RecordingObserver) -> cano.Workflow[Step]:
        return (
            cano.Workflow.bare()
            .register(Step.FETCH, cano.task(config=MINIMAL)(fetch))
            .register(Step.PARSE, crash)
            .add_exit_state(Step.DONE)
            .with_checkpoint_store(store)
            .with_observer(rec)
        )

    first = RecordingObserver()
    with pytest.raises(cano.TaskError):
        await build(first).orchestrate(Step.FETCH, workflow_id="order-1")
    assert first.events_named("on_checkpoint") == [("order-1", 0), ("order-1", 1)]
    assert await store.list_runs() == ["order-1"]

    second = RecordingObserver()
    assert await build(second).resume_from("order-1") is Step.DONE
    assert second.events_named("on_resume") == [("order-1", 1)]
    second.assert_path([Step.PARSE, Step.DONE])
    second.assert_completed_with(Step.DONE)
    assert crash.attempts == 2
    assert await store.list_runs() == []


# --------------------------------------------------------------------------------------------
# TestResources


async def test_test_resources_builds_resources_with_a_memory_store() -> None:
    class Api:
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def setup(self) -> None:
            self.calls.append("setup")

        async def teardown(self) -> None:
            self.calls.append("teardown")

    api = Api()
    kit = TestResources().with_store().with_resource("api", api)
    res = kit.build()
    assert isinstance(res, cano.Resources)
    assert res.keys() == ["store", "api"]
    store = res.get("store", cano.MemoryStore)
    assert len(store) == 0

    async def count(r: cano.Resources) -> Step:
        r.get("store", cano.MemoryStore).append("seen", "fetch")
        return Step.DONE

    wf = cano.Workflow(res).register(Step.FETCH, count).add_exit_state(Step.DONE)
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert store.get("seen") == ["fetch"]
    assert api.calls == ["setup", "teardown"]

    # Each build is independent: a fresh store, the same other values.
    again = kit.build()
    assert again.get("store", cano.MemoryStore) is not store
    assert again.get("api") is api


def test_test_resources_custom_key_and_duplicates() -> None:
    res = TestResources().with_store(key="kv").build()
    assert isinstance(res.get("kv"), cano.MemoryStore)
    assert "store" not in res
    with pytest.raises(cano.ResourceError, match="duplicate resource key 'kv'"):
        TestResources().with_store(key="kv").with_resource("kv", 1)
    assert TestResources.__test__ is False  # pytest must not collect it


# --------------------------------------------------------------------------------------------
# panic_on_attempt


def test_panic_on_attempt_defaults() -> None:
    t = panic_on_attempt(2, Step.DONE)
    assert isinstance(t, PanicOnAttempt)
    assert isinstance(t, cano.Task)
    assert t.name() == "PanicOnAttempt"
    assert t.attempts == 0
    assert t.config().retry_mode.max_attempts == cano.TaskConfig().retry_mode.max_attempts == 4
    with pytest.raises(cano.ConfigurationError, match="n must be an int >= 0"):
        panic_on_attempt(-1, Step.DONE)


async def test_panic_on_attempt_with_default_config_retries_to_success() -> None:
    flaky = panic_on_attempt(1, Step.DONE)
    wf = cano.Workflow.bare().register(Step.FETCH, flaky).add_exit_state(Step.DONE)
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert flaky.attempts == 2


async def test_panic_on_attempt_exhausts_retries() -> None:
    flaky = panic_on_attempt(4, Step.DONE).with_config(FAST)
    wf = cano.Workflow.bare().register(Step.FETCH, flaky).add_exit_state(Step.DONE)
    with pytest.raises(cano.RetryExhaustedError) as info:
        await wf.orchestrate(Step.FETCH)
    assert info.value.attempts == 4
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "attempt 4 of 4" in str(info.value.__cause__)
    assert flaky.attempts == 4
    # The counter spans runs: the next attempt (the fifth) succeeds.
    assert await wf.orchestrate(Step.FETCH) is Step.DONE
    assert flaky.attempts == 5


async def test_panic_on_attempt_minimal_fails_at_once_and_zero_never_fails() -> None:
    once = panic_on_attempt(1, Step.DONE).with_config(MINIMAL)
    wf = cano.Workflow.bare().register(Step.FETCH, once).add_exit_state(Step.DONE)
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(Step.FETCH)
    assert not isinstance(info.value, cano.RetryExhaustedError)
    never = panic_on_attempt(0, Step.DONE)
    wf2 = cano.Workflow.bare().register(Step.FETCH, never).add_exit_state(Step.DONE)
    assert await wf2.orchestrate(Step.FETCH) is Step.DONE
    assert never.attempts == 1


# --------------------------------------------------------------------------------------------
# assert_compensation_ran


def test_assert_compensation_ran_passes_on_equal_sequences() -> None:
    assert_compensation_ran(["ship", "charge"], ["ship", "charge"])
    assert_compensation_ran(iter([1, 2]), (1, 2))
    assert_compensation_ran([], [])


def test_assert_compensation_ran_diff_message() -> None:
    with pytest.raises(AssertionError) as info:
        assert_compensation_ran(["charge", "reserve"], ["ship", "charge", "reserve"])
    msg = str(info.value)
    assert "3 expected, 2 ran" in msg
    assert "expected: ['ship', 'charge', 'reserve']" in msg
    assert "actual:   ['charge', 'reserve']" in msg
    assert "- 'ship'" in msg
    assert "  'charge'" in msg
    assert "different order" not in msg


def test_assert_compensation_ran_order_only() -> None:
    with pytest.raises(AssertionError, match="same compensations in a different order"):
        assert_compensation_ran(["reserve", "charge"], ["charge", "reserve"])
    with pytest.raises(TypeError, match="not strings"):
        assert_compensation_ran("ab", ["a", "b"])


async def test_assert_compensation_ran_with_a_real_saga() -> None:
    log: list[str] = []

    class Step3(enum.Enum):
        RESERVE = enum.auto()
        CHARGE = enum.auto()
        SHIP = enum.auto()
        DONE = enum.auto()

    class Undoable(cano.CompensatableTask[Step3, str]):
        def __init__(self, name: str, nxt: Step3) -> None:
            self._name = name
            self.nxt = nxt

        def name(self) -> str:
            return self._name

        def config(self) -> cano.TaskConfig:
            return MINIMAL

        async def run(self, res: cano.Resources) -> tuple[Step3, str]:
            return self.nxt, self._name

        async def compensate(self, res: cano.Resources, output: str) -> None:
            log.append(output)

    wf: cano.Workflow[Step3] = (
        cano.Workflow.bare()
        .register_with_compensation(Step3.RESERVE, Undoable("reserve", Step3.CHARGE))
        .register_with_compensation(Step3.CHARGE, Undoable("charge", Step3.SHIP))
        .register(Step3.SHIP, panic_on_attempt(1, Step3.DONE).with_config(MINIMAL))
        .add_exit_state(Step3.DONE)
    )
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(Step3.RESERVE)
    assert_compensation_ran(log, ["charge", "reserve"])
    with pytest.raises(AssertionError, match="different order"):
        assert_compensation_ran(log, ["reserve", "charge"])


def test_recording_observer_is_a_workflow_observer() -> None:
    rec: Any = RecordingObserver()
    assert isinstance(rec, cano.WorkflowObserver)
    assert "RecordingObserver(events=0" in repr(rec)
