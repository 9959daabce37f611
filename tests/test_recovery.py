"""Checkpointing and recovery (API §7, §13.2, §13.14; upstream §9) on every kind of store.

Every test that checkpoints runs three times: on ``RedbCheckpointStore`` (durable, Rust),
on ``InMemoryCheckpointStore`` and on ``DictStore``, the smallest store a user could write.
Crashes of a real process (SIGKILL) are in ``tests/crash/``; here a "crash" is a failed,
cancelled or timed-out run, or a log written by hand.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import cano
import pytest
from cano.store import (
    CheckpointRow,
    RowKind,
)

# --------------------------------------------------------------------------------------------
# stores


class Spy:
    """Wraps a store; records every append and clear, and can fail chosen calls."""

    def __init__(
        self, inner: Any, *, fail_append_at: int | None = None, fail_clear: bool = False
    ) -> None:
        self.inner = inner
        self.appended: list[CheckpointRow] = []
        self.cleared: list[str] = []
        self.fail_append_at = fail_append_at
        self.fail_clear = fail_clear

    async def append(self, row: CheckpointRow) -> None:
        if row.sequence == self.fail_append_at:
            raise OSError("disk full")
        await self.inner.append(row)
        self.appended.append(row)

    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        rows: list[CheckpointRow] = await self.inner.load_run(workflow_id)
        return rows

    async def clear(self, workflow_id: str) -> None:
        if self.fail_clear:
            raise OSError("read-only file system")
        self.cleared.append(workflow_id)
        await self.inner.clear(workflow_id)

    async def list_runs(self) -> list[str]:
        runs: list[str] = await self.inner.list_runs()
        return runs


# --------------------------------------------------------------------------------------------
# a workflow whose tasks record what they ran and what the log held when they started


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    C = enum.auto()
    D = enum.auto()
    ROUTE = enum.auto()
    DONE = enum.auto()


def shape(rows: list[CheckpointRow]) -> list[tuple[int, str, str, str]]:
    return [(r.sequence, r.state, r.task_id, r.kind.name) for r in rows]


class Step(cano.Task[S]):
    """Goes to ``nxt``; fails while ``fail`` is positive (one attempt per run)."""

    def __init__(self, label: str, nxt: S, flow: Flow, fail: int = 0) -> None:
        self.label, self.nxt, self.flow, self.fail = label, nxt, flow, fail

    def name(self) -> str:
        return f"step_{self.label}"

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources[Any]) -> S:
        self.flow.ran.append(self.label)
        self.flow.seen[self.label] = shape(await self.flow.store.load_run(self.flow.id))
        gate = self.flow.gates.get(self.label)
        if gate is not None:
            self.flow.parked.set()
            await gate.wait()
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError(f"{self.label} failed")
        return self.nxt


class Flow:
    """A -> B -> C -> DONE (optionally through the router ROUTE between A and B)."""

    def __init__(
        self,
        store: Any,
        *,
        wid: str = "run-1",
        fail: str = "",
        router: bool = False,
        version: int = 0,
    ) -> None:
        self.store, self.id = store, wid
        self.ran: list[str] = []
        self.seen: dict[str, list[tuple[int, str, str, str]]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.parked = asyncio.Event()
        self.observer = Recorder()
        wf: cano.Workflow[S] = cano.Workflow.bare()
        wf.register(S.A, Step("A", S.ROUTE if router else S.B, self, fail=fail.count("A")))
        if router:

            async def route(res: cano.Resources[Any]) -> S:
                self.ran.append("ROUTE")
                return S.B

            wf.register_router(S.ROUTE, route)
        wf.register(S.B, Step("B", S.C, self, fail=fail.count("B")))
        wf.register(S.C, Step("C", S.DONE, self, fail=fail.count("C")))
        wf.add_exit_state(S.DONE).with_checkpoint_store(store).with_workflow_id(wid)
        wf.with_workflow_version(version).with_observer(self.observer)
        self.wf = wf


class Recorder(cano.WorkflowObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def of(self, hook: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.events if name == hook]

    def on_state_enter(self, state: str) -> None:
        self.events.append(("on_state_enter", (state,)))

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        self.events.append(("on_checkpoint", (workflow_id, sequence)))

    def on_resume(self, workflow_id: str, sequence: int) -> None:
        self.events.append(("on_resume", (workflow_id, sequence)))

    def on_checkpoint_clear_failed(self, workflow_id: str, error: BaseException) -> None:
        self.events.append(("on_checkpoint_clear_failed", (workflow_id, error)))

    def on_unknown_resume_state(self, workflow_id: str, sequence: int, label: str) -> None:
        self.events.append(("on_unknown_resume_state", (workflow_id, sequence, label)))


def entry(wid: str, seq: int, state: str, task: str = "", version: int = 0) -> CheckpointRow:
    return CheckpointRow(wid, seq, state, task, RowKind.STATE_ENTRY, None, version)


# --------------------------------------------------------------------------------------------
# rows of a forward run


async def test_each_state_entry_row_is_stored_before_its_task_runs(store: Any) -> None:
    flow = Flow(store)
    assert await flow.wf.orchestrate(S.A) is S.DONE
    assert flow.seen == {
        "A": [(0, "A", "step_A", "STATE_ENTRY")],
        "B": [(0, "A", "step_A", "STATE_ENTRY"), (1, "B", "step_B", "STATE_ENTRY")],
        "C": [
            (0, "A", "step_A", "STATE_ENTRY"),
            (1, "B", "step_B", "STATE_ENTRY"),
            (2, "C", "step_C", "STATE_ENTRY"),
        ],
    }
    # The exit state is checkpointed too (sequence 3), then the log is cleared.
    assert flow.observer.of("on_checkpoint") == [("run-1", i) for i in range(4)]
    assert await store.load_run("run-1") == []
    assert "run-1" not in await store.list_runs()


async def test_rows_carry_the_version_and_no_output(store: Any) -> None:
    flow = Flow(store, fail="B", version=7)
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    rows = await store.load_run("run-1")
    assert [(r.workflow_id, r.workflow_version, r.output, r.kind) for r in rows] == [
        ("run-1", 7, None, RowKind.STATE_ENTRY)
    ] * 2


async def test_router_has_no_row_and_uses_no_sequence(store: Any) -> None:
    flow = Flow(store, router=True)
    assert await flow.wf.orchestrate(S.A) is S.DONE
    assert [s for s, *_ in flow.seen["C"]] == [0, 1, 2]
    assert [label for _, label, *_ in flow.seen["C"]] == ["A", "B", "C"]
    assert ("ROUTE",) in flow.observer.of("on_state_enter")  # entered, just not logged
    assert flow.observer.of("on_checkpoint") == [("run-1", i) for i in range(4)]


async def test_exit_row_has_an_empty_task_id_and_the_log_is_cleared(store: Any) -> None:
    spy = Spy(store)
    flow = Flow(spy)
    await flow.wf.orchestrate(S.A)
    assert shape(spy.appended)[-1] == (3, "DONE", "", "STATE_ENTRY")
    assert spy.cleared == ["run-1"]
    assert await store.load_run("run-1") == []


async def test_starting_at_an_exit_state_runs_nothing(store: Any) -> None:
    flow = Flow(store)
    assert await flow.wf.orchestrate(S.DONE) is S.DONE
    assert flow.ran == []
    assert await store.load_run("run-1") == []


async def test_workflow_id_argument_overrides_with_workflow_id(store: Any) -> None:
    flow = Flow(store, fail="C")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A, workflow_id="other")
    assert await store.load_run("run-1") == []
    assert [r.state for r in await store.load_run("other")] == ["A", "B", "C"]


# --------------------------------------------------------------------------------------------
# a store but no id; a resume without a store


async def test_store_without_workflow_id_fails_at_start(store: Any) -> None:
    setups: list[str] = []

    class Res:
        async def setup(self) -> None:
            setups.append("setup")

    ran: list[str] = []

    async def a(res: cano.Resources[Any]) -> S:
        ran.append("A")
        return S.DONE

    resources: cano.Resources[str] = cano.Resources().insert("r", Res())
    wf: cano.Workflow[S] = cano.Workflow(resources)
    wf.register(S.A, a).add_exit_state(S.DONE).with_checkpoint_store(store)
    with pytest.raises(cano.ConfigurationError) as info:
        await wf.orchestrate(S.A)
    assert "pass workflow_id= or call with_workflow_id" in str(info.value)
    assert (ran, setups) == ([], [])
    assert await store.list_runs() == []
    # With an id it runs.
    assert await wf.orchestrate(S.A, workflow_id="x") is S.DONE


async def test_resume_without_a_store_is_a_configuration_error() -> None:
    async def a() -> S:
        return S.DONE

    bare: cano.Workflow[S] = cano.Workflow.bare()
    bare.register(S.A, a).add_exit_state(S.DONE)
    with pytest.raises(cano.ConfigurationError, match="with_checkpoint_store"):
        await bare.resume_from("run-1")


# --------------------------------------------------------------------------------------------
# failure keeps the log; resume re-runs only the last recorded state


async def test_failure_keeps_the_log_and_resume_reruns_only_the_failed_state(store: Any) -> None:
    flow = Flow(store, fail="C")
    with pytest.raises(cano.TaskError) as info:
        await flow.wf.orchestrate(S.A)
    assert info.value.state == "C"
    assert shape(await store.load_run("run-1")) == [
        (0, "A", "step_A", "STATE_ENTRY"),
        (1, "B", "step_B", "STATE_ENTRY"),
        (2, "C", "step_C", "STATE_ENTRY"),
    ]
    flow.ran.clear()
    flow.observer.events.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["C"]  # A and B never run again
    # The resumed state continues the visit its entry row (2) began: no new row for it.
    assert flow.seen["C"][-1] == (2, "C", "step_C", "STATE_ENTRY")
    assert flow.observer.of("on_resume") == [("run-1", 2)]
    assert flow.observer.of("on_checkpoint") == [("run-1", 3)]
    assert flow.observer.of("on_state_enter") == [("C",), ("DONE",)]
    assert await store.load_run("run-1") == []


async def test_resume_of_a_middle_state_runs_the_rest(store: Any) -> None:
    flow = Flow(store, fail="B")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    flow.ran.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["B", "C"]


async def test_a_resumed_run_fails_with_the_states_before_the_crash_on_its_path(
    store: Any,
) -> None:
    flow = Flow(store, fail="CC")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    with pytest.raises(cano.TaskError) as info:
        await flow.wf.resume_from("run-1")
    assert info.value.state == "C"
    assert info.value.path == ["A", "B", "C"]
    assert [r.state for r in await store.load_run("run-1")] == ["A", "B", "C"]
    flow.ran.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["C"]


async def test_a_resume_through_a_router_does_not_rerun_it(store: Any) -> None:
    flow = Flow(store, fail="B", router=True)
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    assert [r.state for r in await store.load_run("run-1")] == ["A", "B"]
    flow.ran.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["B", "C"]


async def test_retried_attempts_write_one_row(store: Any) -> None:
    attempts: list[int] = []

    async def flaky(res: cano.Resources[Any]) -> S:
        attempts.append(len(await store.load_run("r")))
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return S.DONE

    wf: cano.Workflow[S] = cano.Workflow.bare()
    task = cano.task(config=cano.TaskConfig().with_fixed_retry(3, 0))(flaky)
    wf.register(S.A, task).add_exit_state(S.DONE).with_checkpoint_store(store)
    assert await wf.orchestrate(S.A, workflow_id="r") is S.DONE
    assert attempts == [1, 1, 1]  # retries are not new states


async def test_resume_at_an_exit_state_returns_it_and_clears(store: Any) -> None:
    for row in [entry("run-1", 0, "A", "step_A"), entry("run-1", 1, "DONE")]:
        await store.append(row)
    flow = Flow(store)
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == []
    assert flow.observer.of("on_checkpoint") == []  # its entry row is in the log already
    assert await store.load_run("run-1") == []


async def test_resume_of_a_hand_written_log(store: Any) -> None:
    # Sequences need not be dense or start at 0; the last row decides.
    for row in [entry("w", 10, "A"), entry("w", 20, "B"), entry("w", 25, "C")][::-1]:
        await store.append(row)
    flow = Flow(store, wid="w")
    assert await flow.wf.resume_from("w") is S.DONE
    assert flow.ran == ["C"]
    assert flow.observer.of("on_resume") == [("w", 25)]
    assert flow.seen["C"][-1][0] == 25  # the resumed visit's own entry row
    assert flow.observer.of("on_checkpoint") == [("w", 26)]  # DONE follows the last row


async def test_resume_again_after_success_has_no_rows(store: Any) -> None:
    flow = Flow(store, fail="C")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    await flow.wf.resume_from("run-1")
    with pytest.raises(cano.CheckpointError, match="run-1"):
        await flow.wf.resume_from("run-1")


async def test_resume_of_an_unknown_id_is_a_checkpoint_error(store: Any) -> None:
    flow = Flow(store)
    with pytest.raises(cano.CheckpointError, match="no checkpoint rows"):
        await flow.wf.resume_from("never-ran")
    assert flow.ran == []


async def test_resume_of_a_log_ending_in_an_unknown_state(store: Any) -> None:
    await store.append(entry("run-1", 0, "A"))
    await store.append(entry("run-1", 1, "RENAMED"))
    flow = Flow(store)
    with pytest.raises(cano.WorkflowError, match="RENAMED"):
        await flow.wf.resume_from("run-1")
    assert flow.ran == []
    assert len(await store.load_run("run-1")) == 2


async def test_unknown_earlier_states_are_reported_and_skipped(store: Any) -> None:
    for row in [entry("run-1", 0, "OLD"), entry("run-1", 1, "A"), entry("run-1", 2, "C")]:
        await store.append(row)
    flow = Flow(store, fail="C")
    with pytest.raises(cano.TaskError) as info:
        await flow.wf.resume_from("run-1")
    assert flow.observer.of("on_unknown_resume_state") == [("run-1", 0, "OLD")]
    assert info.value.path == ["A", "C"]


async def test_a_fresh_run_on_an_uncleared_id_conflicts_and_keeps_the_old_log(
    store: Any,
) -> None:
    flow = Flow(store, fail="B")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    before = await store.load_run("run-1")
    flow.ran.clear()
    with pytest.raises(cano.CheckpointError) as info:
        await flow.wf.orchestrate(S.A)
    assert "already has a row at sequence 0" in str(info.value.__cause__ or info.value)
    assert flow.ran == []
    assert await store.load_run("run-1") == before


async def test_a_failing_append_fails_the_run_before_the_task(store: Any) -> None:
    spy = Spy(store, fail_append_at=1)
    flow = Flow(spy)
    with pytest.raises(cano.CheckpointError) as info:
        await flow.wf.orchestrate(S.A)
    assert flow.ran == ["A"]  # B's row could not be written, so B never ran
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.state == "B"
    assert [r.state for r in await store.load_run("run-1")] == ["A"]


async def test_a_failing_clear_is_reported_and_the_run_still_succeeds(store: Any) -> None:
    flow = Flow(Spy(store, fail_clear=True))
    assert await flow.wf.orchestrate(S.A) is S.DONE
    [(wid, err)] = flow.observer.of("on_checkpoint_clear_failed")
    assert wid == "run-1"
    assert isinstance(err, OSError)


# --------------------------------------------------------------------------------------------
# cancellation and timeouts keep the log


async def test_cancel_with_a_token_keeps_the_log_and_resume_reruns_that_state(
    store: Any,
) -> None:
    flow = Flow(store)
    flow.gates["B"] = asyncio.Event()
    token, handle = cano.CancellationToken.new()
    run = asyncio.ensure_future(flow.wf.orchestrate(S.A, cancel=token))
    await asyncio.wait_for(flow.parked.wait(), 5)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert [r.state for r in await store.load_run("run-1")] == ["A", "B"]
    flow.ran.clear()
    flow.gates.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["B", "C"]


async def test_cancelling_the_asyncio_task_keeps_the_log(store: Any) -> None:
    flow = Flow(store)
    flow.gates["C"] = asyncio.Event()
    run = asyncio.ensure_future(flow.wf.orchestrate(S.A))
    await asyncio.wait_for(flow.parked.wait(), 5)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [r.state for r in await store.load_run("run-1")] == ["A", "B", "C"]
    flow.gates.clear()
    flow.ran.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["C"]


async def test_a_pre_cancelled_resume_runs_nothing_and_keeps_the_log(store: Any) -> None:
    flow = Flow(store, fail="B")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    rows = await store.load_run("run-1")
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    flow.ran.clear()
    with pytest.raises(cano.WorkflowCancelledError):
        await flow.wf.resume_from("run-1", cancel=token)
    assert flow.ran == []
    assert await store.load_run("run-1") == rows
    assert await flow.wf.resume_from("run-1") is S.DONE


async def test_total_timeout_keeps_the_log(store: Any) -> None:
    flow = Flow(store)
    flow.gates["B"] = asyncio.Event()  # never set
    flow.wf.with_total_timeout(0.05)
    with pytest.raises(cano.WorkflowTimeoutError):
        await flow.wf.orchestrate(S.A)
    assert [r.state for r in await store.load_run("run-1")] == ["A", "B"]


# --------------------------------------------------------------------------------------------
# versions


async def test_version_mismatch_refuses_to_resume_and_touches_nothing(store: Any) -> None:
    old = Flow(store, fail="B", version=1)
    with pytest.raises(cano.TaskError):
        await old.wf.orchestrate(S.A)
    rows = await store.load_run("run-1")
    new = Flow(store, version=2)
    with pytest.raises(cano.WorkflowVersionMismatchError) as info:
        await new.wf.resume_from("run-1")
    assert isinstance(info.value, cano.CheckpointError)
    assert (info.value.stored, info.value.expected) == (1, 2)
    assert new.ran == []
    assert await store.load_run("run-1") == rows
    same = Flow(store, version=1)
    assert await same.wf.resume_from("run-1") is S.DONE
    assert same.ran == ["B", "C"]


async def test_default_version_is_zero_and_a_versioned_workflow_rejects_it(store: Any) -> None:
    flow = Flow(store, fail="A")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    assert [r.workflow_version for r in await store.load_run("run-1")] == [0]
    with pytest.raises(cano.WorkflowVersionMismatchError) as info:
        await Flow(store, version=5).wf.resume_from("run-1")
    assert (info.value.stored, info.value.expected) == (0, 5)


async def test_only_the_last_row_version_is_checked(store: Any) -> None:
    await store.append(entry("run-1", 0, "A", version=1))
    await store.append(entry("run-1", 1, "B", version=2))
    flow = Flow(store, version=2)
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["B", "C"]


def test_with_workflow_version_validates() -> None:
    wf: cano.Workflow[S] = cano.Workflow.bare()
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(cano.ConfigurationError):
            wf.with_workflow_version(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# many runs on one store


async def test_concurrent_runs_on_one_store_keep_separate_logs(store: Any) -> None:
    flows = [Flow(store, wid=f"run-{i}", fail="C" if i % 2 else "") for i in range(20)]
    outcomes = await asyncio.gather(*(f.wf.orchestrate(S.A) for f in flows), return_exceptions=True)
    for i, out in enumerate(outcomes):
        assert isinstance(out, cano.TaskError) if i % 2 else out is S.DONE
    assert await store.list_runs() == sorted(f"run-{i}" for i in range(1, 20, 2))
    for f in flows[1::2]:
        assert [r.sequence for r in await store.load_run(f.id)] == [0, 1, 2]
    resumed = await asyncio.gather(*(f.wf.resume_from(f.id) for f in flows[1::2]))
    assert resumed == [S.DONE] * 10
    assert await store.list_runs() == []


# --------------------------------------------------------------------------------------------
# stream window cursor commits


@dataclass(frozen=True)
class Offset:
    next: int


class Numbers(cano.StreamTask[S, int, int, Offset]):
    """Streams 0..9 from the cursor on, windows of 3; can fail one flush."""

    cursor_type = Offset

    def __init__(self, store: Any, fail_flush: int | None = None) -> None:
        self.store = store
        self.fail_flush = fail_flush
        self.opened: list[Offset | None] = []
        self.flushed: list[list[int]] = []
        self.committed_at_flush: list[list[int]] = []

    def window(self) -> cano.StreamWindow:
        return cano.StreamWindow.count(3)

    async def open(self, res: cano.Resources[Any], cursor: Offset | None) -> AsyncIterator[int]:
        self.opened.append(cursor)
        for i in range(cursor.next if cursor else 0, 10):
            yield i

    async def process_item(self, res: cano.Resources[Any], item: int) -> tuple[int, Offset]:
        return item, Offset(item + 1)

    async def flush_window(
        self, res: cano.Resources[Any], outputs: list[int]
    ) -> cano.Continue | cano.Stop[S]:
        self.committed_at_flush.append(await cursors(self.store, "s"))
        if outputs[0] == self.fail_flush:
            self.fail_flush = None
            raise RuntimeError("sink unavailable")
        self.flushed.append(outputs)
        return cano.Continue()

    async def on_close(self, res: cano.Resources[Any], reason: cano.CloseReason) -> S:
        return S.DONE


async def cursors(store: Any, wid: str) -> list[int]:
    import orjson

    rows = await store.load_run(wid)
    return [orjson.loads(r.output)["next"] for r in rows if r.kind is RowKind.STEP_CURSOR]


def stream_flow(store: Any, task: Numbers) -> cano.Workflow[S]:
    async def a() -> S:
        return S.B

    wf: cano.Workflow[S] = cano.Workflow.bare()
    wf.register(S.A, a)
    wf.register_stream(S.B, task).add_exit_state(S.DONE).with_checkpoint_store(store)
    return wf


async def test_stream_commits_the_last_cursor_of_each_flushed_window(store: Any) -> None:
    task = Numbers(store)
    spy = Spy(store)
    assert await stream_flow(spy, task).orchestrate(S.A, workflow_id="s") is S.DONE
    assert task.flushed == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # Before each flush, exactly the earlier windows are committed.
    assert task.committed_at_flush == [[], [3], [3, 6], [3, 6, 9]]
    rows = [r for r in spy.appended if r.kind is RowKind.STEP_CURSOR]
    assert [(r.state, r.task_id, r.output) for r in rows] == [
        ("B", "Numbers", b'{"next":3}'),
        ("B", "Numbers", b'{"next":6}'),
        ("B", "Numbers", b'{"next":9}'),
        ("B", "Numbers", b'{"next":10}'),  # the final cursor, at exhaustion
    ]
    assert [r.sequence for r in spy.appended] == list(range(len(spy.appended)))
    assert await store.load_run("s") == []


async def test_a_resumed_stream_reopens_at_the_last_committed_cursor(store: Any) -> None:
    task = Numbers(store, fail_flush=6)
    wf = stream_flow(store, task)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.A, workflow_id="s")
    assert await cursors(store, "s") == [3, 6]  # the failed window was not committed
    task.flushed.clear()
    assert await wf.resume_from("s") is S.DONE
    assert task.opened == [None, Offset(6)]  # rebuilt as cursor_type
    assert task.flushed == [[6, 7, 8], [9]]  # the uncommitted window again: at least once


async def test_a_cancelled_stream_commits_its_final_cursor_and_resumes_there(
    store: Any,
) -> None:
    stalled = asyncio.Event()

    class Stalls(Numbers):
        async def open(self, res: cano.Resources[Any], cursor: Offset | None) -> AsyncIterator[int]:
            self.opened.append(cursor)
            start = cursor.next if cursor else 0
            for i in range(start, 10):
                if i == 5 and cursor is None:
                    stalled.set()
                    await asyncio.Event().wait()  # the source stalls; the run is cancelled
                yield i

    task = Stalls(store)
    wf = stream_flow(store, task)
    token, handle = cano.CancellationToken.new()
    run = asyncio.ensure_future(wf.orchestrate(S.A, workflow_id="s", cancel=token))
    await asyncio.wait_for(stalled.wait(), 5)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    # The partial window [3, 4] was flushed and its cursor committed before the run ended.
    assert task.flushed == [[0, 1, 2], [3, 4]]
    assert await cursors(store, "s") == [3, 5]
    task.flushed.clear()
    assert await wf.resume_from("s") is S.DONE
    assert task.opened == [None, Offset(5)]
    assert task.flushed == [[5, 6, 7], [8, 9]]


# --------------------------------------------------------------------------------------------
# what the engine does not trust a store to do


class Unsorted(Spy):
    """Returns a run's rows in reverse order."""

    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        return list(reversed(await super().load_run(workflow_id)))


async def test_resume_sorts_the_rows_it_loads(store: Any) -> None:
    flow = Flow(Unsorted(store), fail="B")
    with pytest.raises(cano.TaskError):
        await flow.wf.orchestrate(S.A)
    flow.ran.clear()
    assert await flow.wf.resume_from("run-1") is S.DONE
    assert flow.ran == ["B", "C"]


class Broken(Spy):
    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        raise OSError("connection reset")


async def test_a_failing_load_is_a_checkpoint_error(store: Any) -> None:
    flow = Flow(Broken(store))
    with pytest.raises(cano.CheckpointError, match="run-1") as info:
        await flow.wf.resume_from("run-1")
    assert isinstance(info.value.__cause__, OSError)
    assert flow.ran == []


async def test_two_runs_racing_on_one_id_the_second_conflicts(store: Any) -> None:
    first = Flow(store)
    first.gates["A"] = asyncio.Event()
    run = asyncio.ensure_future(first.wf.orchestrate(S.A))
    await asyncio.wait_for(first.parked.wait(), 5)
    second = Flow(store)
    with pytest.raises(cano.CheckpointError):
        await second.wf.orchestrate(S.A)
    assert second.ran == []
    assert [r.task_id for r in await store.load_run("run-1")] == ["step_A"]
    first.gates["A"].set()
    assert await run is S.DONE
    assert await store.load_run("run-1") == []
