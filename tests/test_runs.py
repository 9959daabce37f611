"""Run records and step history (API.md §14.1) on the stores that keep them."""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cano
import pytest
from cano import RunStatus
from cano.store import CheckpointRow, RowKind
from stores import DictStore


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


@pytest.fixture
def store(record_store: Any) -> Any:
    """The stores that keep run records (conftest's ``record_store``), by a shorter name."""
    return record_store


async def to_b(res: cano.Resources) -> S:
    return S.B


async def to_done(res: cano.Resources) -> S:
    return S.DONE


def flow(store: Any, b: Any = to_done, *, name: str | None = "orders") -> cano.Workflow[S]:
    once = cano.task(name="b", config=cano.TaskConfig.minimal())(b)
    wf = cano.Workflow[S](cano.Resources.empty(), name=name)
    return (
        wf.register(S.A, to_b)
        .register(S.B, once)
        .add_exit_state(S.DONE)
        .with_checkpoint_store(store)
    )


async def test_a_completed_run_keeps_its_record_and_steps_after_its_log_is_cleared(
    store: Any,
) -> None:
    client = cano.Client(store)
    before = datetime.now(UTC)
    assert await flow(store).orchestrate(S.A, workflow_id="r1") is S.DONE
    info = await client.get("r1")
    assert info is not None
    assert info.status is RunStatus.COMPLETED and info.status.terminal
    assert (info.workflow_name, info.final_state, info.state, info.attempts) == (
        "orders",
        "DONE",
        "DONE",
        1,
    )
    assert info.error is None and info.error_type is None and info.input is None
    assert before <= info.created_at <= info.updated_at
    assert info.finished_at == info.updated_at
    assert await store.load_run("r1") == []  # the resume log is still cleared (§7)
    steps = await client.steps("r1")
    assert [(s.sequence, s.state, s.task_id, s.kind) for s in steps] == [
        (0, "A", "to_b", RowKind.STATE_ENTRY),
        (1, "B", "b", RowKind.STATE_ENTRY),
        (2, "DONE", "", RowKind.STATE_ENTRY),
    ]
    assert [s.finished_at for s in steps[:-1]] == [s.started_at for s in steps[1:]]
    assert steps[-1].finished_at == info.finished_at
    assert await client.get("nobody") is None and await client.steps("nobody") == []


async def test_a_failed_run_records_the_error_and_where_then_resumes(store: Any) -> None:
    client = cano.Client(store)
    fail = {"on": True}

    async def flaky(res: cano.Resources) -> S:
        if fail["on"]:
            raise ConnectionError("the bank is down")
        return S.DONE

    wf = flow(store, flaky)
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.A, workflow_id="r2")
    info = await client.get("r2")
    assert info is not None and info.status is RunStatus.FAILED
    assert (info.state, info.error_type, info.final_state) == ("B", "TaskError", None)
    assert info.error is not None and "the bank is down" in info.error
    assert [r.state for r in await store.load_run("r2")] == ["A", "B"]  # kept: resumable
    fail["on"] = False
    assert await wf.resume_from("r2") is S.DONE
    info = await client.get("r2")
    assert info is not None and info.status is RunStatus.COMPLETED and info.attempts == 2
    assert info.error is None
    assert [s.state for s in await client.steps("r2")] == ["A", "B", "DONE"]


async def test_a_run_cancelled_by_its_token_is_cancelled(store: Any) -> None:
    token, handle = cano.CancellationToken.new()
    started = asyncio.Event()

    async def slow(res: cano.Resources) -> S:
        started.set()
        await asyncio.sleep(30)
        return S.DONE

    run = asyncio.ensure_future(flow(store, slow).orchestrate(S.A, workflow_id="r3", cancel=token))
    await started.wait()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    info = await cano.Client(store).get("r3")
    assert info is not None and info.status is RunStatus.CANCELLED
    assert (info.state, info.error_type) == ("B", "WorkflowCancelledError")


async def test_a_run_cancelled_from_outside_stays_running_like_a_crash(store: Any) -> None:
    started = asyncio.Event()

    async def slow(res: cano.Resources) -> S:
        started.set()
        await asyncio.sleep(30)
        return S.DONE

    run = asyncio.ensure_future(flow(store, slow).orchestrate(S.A, workflow_id="r4"))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    info = await cano.Client(store).get("r4")
    assert info is not None and info.status is RunStatus.RUNNING and info.state == "B"
    assert await flow(store).resume_from("r4") is S.DONE


async def test_stepped_cursors_are_steps_with_their_values(store: Any) -> None:
    class Count(cano.SteppedTask[S, int]):
        async def step(self, res: cano.Resources, cursor: int | None) -> Any:
            n = (cursor or 0) + 1
            return cano.More(n) if n < 3 else cano.Done(S.DONE)

    wf = (
        cano.Workflow[S](cano.Resources.empty())
        .register_stepped(S.A, Count())
        .add_exit_state(S.DONE)
        .with_checkpoint_store(store)
    )
    assert await wf.orchestrate(S.A, workflow_id="r5") is S.DONE
    steps = await cano.Client(store).steps("r5")
    assert [(s.state, s.kind, s.output) for s in steps] == [
        ("A", RowKind.STATE_ENTRY, None),
        ("A", RowKind.STEP_CURSOR, 1),
        ("A", RowKind.STEP_CURSOR, 2),
        ("DONE", RowKind.STATE_ENTRY, None),
    ]
    info = await cano.Client(store).get("r5")
    assert info is not None and info.workflow_name is None


async def test_list_filters_newest_first_and_pages(store: Any) -> None:
    client = cano.Client(store)

    async def broken(res: cano.Resources) -> S:
        raise ValueError("no")

    for i in range(3):
        await flow(store).orchestrate(S.A, workflow_id=f"ok-{i}")
    with pytest.raises(cano.TaskError):
        await flow(store, broken, name="other").orchestrate(S.A, workflow_id="bad")
    everything = await client.list()
    assert [i.workflow_id for i in everything] == ["bad", "ok-2", "ok-1", "ok-0"]
    failed = await client.list(status=RunStatus.FAILED)
    assert [i.workflow_id for i in failed] == ["bad"]
    both = await client.list(status=[RunStatus.FAILED, RunStatus.COMPLETED], limit=2, offset=1)
    assert [i.workflow_id for i in both] == ["ok-2", "ok-1"]
    assert [i.workflow_id for i in await client.list(workflow_name="other")] == ["bad"]
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await client.list(since=later) == []
    assert len(await client.list(since=everything[-1].created_at)) == 4
    for bad in ({"status": "FAILED"}, {"limit": 0}, {"since": datetime.now()}):
        with pytest.raises(cano.ConfigurationError):
            await client.list(**bad)  # type: ignore[arg-type]


async def test_prune_removes_old_ended_runs_only(store: Any) -> None:
    client = cano.Client(store)
    started = asyncio.Event()

    async def slow(res: cano.Resources) -> S:
        started.set()
        await asyncio.sleep(30)
        return S.DONE

    await flow(store).orchestrate(S.A, workflow_id="old")
    running = asyncio.ensure_future(flow(store, slow).orchestrate(S.A, workflow_id="live"))
    await started.wait()
    assert await client.prune(older_than=3600) == 0  # nothing that old
    assert await client.prune(older_than=0, statuses=[RunStatus.FAILED]) == 0
    assert await client.prune(older_than=0) == 1
    assert await client.get("old") is None and await client.steps("old") == []
    live = await client.get("live")
    assert live is not None and live.status is RunStatus.RUNNING  # never pruned while running
    with pytest.raises(cano.ConfigurationError, match="RUNNING"):
        await client.prune(older_than=0, statuses=[RunStatus.RUNNING])
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_wait_returns_the_ended_record_or_times_out(store: Any) -> None:
    client = cano.Client(store)
    gate = asyncio.Event()

    async def gated(res: cano.Resources) -> S:
        await gate.wait()
        return S.DONE

    run = asyncio.ensure_future(flow(store, gated).orchestrate(S.A, workflow_id="w"))
    with pytest.raises(TimeoutError):
        await client.wait("w", timeout=0.05)
    gate.set()
    info = await client.wait("w", timeout=30)
    assert info.status is RunStatus.COMPLETED
    assert await run is S.DONE


async def test_a_saga_that_rolled_back_is_failed_with_its_log_cleared(store: Any) -> None:
    undone: list[int] = []

    class Charge(cano.CompensatableTask[S, int]):
        async def run(self, res: cano.Resources) -> tuple[S, int]:
            return S.B, 42

        async def compensate(self, res: cano.Resources, output: int) -> None:
            undone.append(output)

    async def broken(res: cano.Resources) -> S:
        raise ValueError("out of stock")

    wf = (
        cano.Workflow[S](cano.Resources.empty())
        .register_with_compensation(S.A, Charge())
        .register(S.B, cano.task(config=cano.TaskConfig.minimal())(broken))
        .add_exit_state(S.DONE)
        .with_checkpoint_store(store)
    )
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.A, workflow_id="saga")
    assert undone == [42]
    info = await cano.Client(store).get("saga")
    assert info is not None and info.status is RunStatus.FAILED and info.state == "B"
    assert await store.load_run("saga") == []  # rolled back cleanly: nothing to resume
    steps = await cano.Client(store).steps("saga")
    assert [(s.state, s.kind) for s in steps] == [
        ("A", RowKind.STATE_ENTRY),
        ("A", RowKind.COMPENSATION),
        ("B", RowKind.STATE_ENTRY),
    ]
    assert steps[1].output == 42


def test_stores_without_records_are_refused_by_the_client() -> None:
    with pytest.raises(cano.ConfigurationError, match="DictStore keeps no run records"):
        cano.Client(DictStore())


async def test_a_store_without_records_still_runs_and_resumes() -> None:
    store = DictStore()
    assert await flow(store).orchestrate(S.A, workflow_id="plain") is S.DONE
    assert await store.load_run("plain") == []


def test_workflow_names_are_checked() -> None:
    assert cano.Workflow.bare().with_name("orders").name == "orders"
    assert cano.Workflow[S](name="x").name == "x"
    for bad in ("", 5, "a\x00b"):
        with pytest.raises(cano.ConfigurationError, match="name"):
            cano.Workflow.bare().with_name(bad)  # type: ignore[arg-type]


async def test_a_sqlite_file_from_before_run_records_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE cano_checkpoints (workflow_id TEXT NOT NULL, sequence INTEGER NOT NULL, "
        "state TEXT NOT NULL, task_id TEXT NOT NULL, kind INTEGER NOT NULL, output BLOB, "
        "workflow_version INTEGER NOT NULL, PRIMARY KEY (workflow_id, sequence)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO cano_checkpoints VALUES ('old', 0, 'A', 'to_b', 0, NULL, 0)")
    conn.commit()
    conn.close()
    async with cano.SqliteCheckpointStore(path) as store:
        assert await store.load_run("old") == [
            CheckpointRow("old", 0, "A", "to_b", RowKind.STATE_ENTRY, None, 0)
        ]
        assert await flow(store).resume_from("old") is S.DONE
        info = await cano.Client(store).get("old")
        assert info is not None and info.status is RunStatus.COMPLETED
        steps = await cano.Client(store).steps("old")
        assert [s.state for s in steps] == ["A", "B", "DONE"]
        assert steps[0].started_at == datetime.fromtimestamp(0, UTC)  # no time was kept
