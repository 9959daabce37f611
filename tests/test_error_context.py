"""Every engine error says where it happened (API §11): ``state``, ``attempt`` and ``path``,
including errors raised on Python code paths (resume, the saga drain, task drivers, the
initial state) — and a lost lease abandons the run without compensating or clearing."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import CheckpointRow
from stores import DictStore


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    C = enum.auto()
    DONE = enum.auto()
    ELSEWHERE = enum.auto()


async def to_b() -> S:
    return S.B


async def to_c() -> S:
    return S.C


async def test_an_unknown_initial_state_names_it_as_the_failing_state() -> None:
    wf = cano.Workflow[S].bare().register(S.A, to_b).register(S.B, to_c).add_exit_state(S.C)
    with pytest.raises(cano.ConfigurationError) as info:
        await wf.orchestrate(S.ELSEWHERE)
    assert info.value.state == "ELSEWHERE"
    assert info.value.path == []


async def test_a_resume_with_no_rows_names_the_run() -> None:
    wf = cano.Workflow[S].bare().register(S.A, to_b).add_exit_state(S.B)
    wf.with_checkpoint_store(DictStore())
    run = wf.resume_from("nobody")
    assert asyncio.iscoroutine(run)  # the Run itself, not a wrapper
    assert isinstance(run, cano.Run)
    with pytest.raises(cano.CheckpointError, match="no checkpoint rows for workflow id 'nobody'"):
        await run


async def test_a_version_mismatch_carries_the_state_and_path_of_the_log() -> None:
    store = DictStore()
    wf = cano.Workflow[S].bare().register(S.A, to_b).register(S.B, to_c).add_exit_state(S.C)
    wf.with_checkpoint_store(store).with_workflow_version(2)
    await store.append(CheckpointRow("w", 0, "A", "to_b", cano.RowKind.STATE_ENTRY, None, 1))
    with pytest.raises(cano.WorkflowVersionMismatchError) as info:
        await wf.resume_from("w")
    assert (info.value.stored, info.value.expected) == (1, 2)


async def test_a_stream_item_timeout_carries_the_state_and_path() -> None:
    class Slow(cano.StreamTask[S, int, int, int]):
        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal().with_attempt_timeout(0.01)

        async def open(self, res: cano.Resources[Any], cursor: int | None) -> AsyncIterator[int]:
            async def items() -> AsyncIterator[int]:
                yield 1

            return items()

        async def process_item(self, res: cano.Resources[Any], item: int) -> tuple[int, int]:
            await asyncio.sleep(10)
            return item, item

        async def flush_window(self, res: cano.Resources[Any], outputs: list[int]) -> Any:
            return cano.Continue()

        async def on_close(self, res: cano.Resources[Any], reason: cano.CloseReason) -> S:
            return S.DONE

    wf = cano.Workflow[S].bare().register(S.A, to_b).register_stream(S.B, Slow())
    wf.add_exit_state(S.DONE)
    with pytest.raises(cano.CanoError) as info:
        await wf.orchestrate(S.A)
    err = info.value
    assert err.state == "B"
    assert err.path == ["A", "B"]
    cause = err if isinstance(err, cano.TaskTimeoutError) else err.__cause__
    assert isinstance(cause, cano.TaskTimeoutError)
    assert cause.state == "B"
    assert cause.path == ["A", "B"]


async def test_a_drain_error_carries_the_state_and_path() -> None:
    class Charge(cano.CompensatableTask[S, int]):
        async def run(self, res: cano.Resources[Any]) -> tuple[S, int]:
            return S.B, 7

        async def compensate(self, res: cano.Resources[Any], output: int) -> None:
            raise RuntimeError("refund failed")

    async def boom() -> S:
        raise RuntimeError("ship failed")

    wf = cano.Workflow[S].bare().register_with_compensation(S.A, Charge())
    wf.register(S.B, cano.task(config=cano.TaskConfig.minimal())(boom)).add_exit_state(S.DONE)
    with pytest.raises(cano.CompensationFailedError) as info:
        await wf.orchestrate(S.A)
    assert info.value.state == "B"
    assert info.value.path == ["A", "B"]
    assert isinstance(info.value.errors[0], cano.TaskError)


class LosesTheLeaseAt(DictStore):
    """A store whose run was taken over by another worker from sequence ``at`` on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.cleared: list[str] = []

    async def append(self, row: CheckpointRow) -> None:
        if row.sequence >= self.at:
            raise cano.LeaseLostError(f"run {row.workflow_id!r} belongs to another worker")
        await super().append(row)

    async def clear(self, workflow_id: str) -> None:
        self.cleared.append(workflow_id)
        await super().clear(workflow_id)


async def test_a_lost_lease_abandons_the_run_without_compensating_or_clearing() -> None:
    undone: list[int] = []

    class Charge(cano.CompensatableTask[S, int]):
        async def run(self, res: cano.Resources[Any]) -> tuple[S, int]:
            return S.B, 7

        async def compensate(self, res: cano.Resources[Any], output: int) -> None:
            undone.append(output)

    store = LosesTheLeaseAt(3)
    wf = cano.Workflow[S].bare().register_with_compensation(S.A, Charge())
    wf.register(S.B, to_c).register(S.C, to_c).add_exit_state(S.DONE)
    wf.with_checkpoint_store(store)
    with pytest.raises(cano.LeaseLostError) as info:
        await wf.orchestrate(S.A, workflow_id="w")
    assert isinstance(info.value, cano.CheckpointError)
    assert info.value.state == "C"
    assert undone == []  # the new owner carries the saga on
    assert store.cleared == []
    assert [r.sequence for r in await store.load_run("w")] == [0, 1, 2]


async def test_a_resume_with_no_rows_names_the_file_it_looked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative (or mistyped) path opens a new, empty store: the error says where it was.
    monkeypatch.chdir(tmp_path)
    with cano.RedbCheckpointStore("typo.redb") as store:
        wf = cano.Workflow[S].bare().register(S.A, to_b).add_exit_state(S.B)
        wf.with_checkpoint_store(store)
        with pytest.raises(cano.CheckpointError) as info:
            await wf.resume_from("order-7")
    assert f"in 'typo.redb' ({tmp_path / 'typo.redb'})" in str(info.value)
