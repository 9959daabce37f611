"""A durable run moves on between rows without waking its task (``RedbCheckpointStore``).

On the embedded store the engine drives a run from the store's completion callback while
the task awaiting it stays parked (see ``rust/bindings/src/run/parked.rs``). Whatever a
state's code can observe must be what it sees when the task steps the run itself: the same
current task, the same context, cancellation at the same points, the same outcome. Every
test here runs on the embedded store and on SQLite (whose appends run in a thread, so the
task is always woken) and expects the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cano
import pytest
from cano.store import RedbCheckpointStore


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    C = enum.auto()
    D = enum.auto()
    DONE = enum.auto()


CHAIN = [S.A, S.B, S.C, S.D, S.DONE]
TRACE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("trace", default=())


@pytest.fixture(params=["redb", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "redb":
        redb = RedbCheckpointStore(tmp_path / "parked.redb")
        yield redb
        redb.close()
    else:
        sqlite = cano.SqliteCheckpointStore(tmp_path / "parked.db")
        yield sqlite
        sqlite.close()


def chain(store: Any, body: Any) -> cano.Workflow[S]:
    """A → B → C → D → DONE, each state running ``body(state)`` before moving on."""

    def step(here: S, there: S) -> Any:
        async def task() -> S:
            await body(here)
            return there

        return task

    wf = cano.Workflow[S].bare()
    for here, there in itertools.pairwise(CHAIN):
        wf = wf.register(here, step(here, there))
    return wf.add_exit_state(S.DONE).with_checkpoint_store(store)


async def test_every_state_runs_in_the_task_awaiting_the_run(store: Any) -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def body(_: S) -> None:
        seen.append(asyncio.current_task())

    wf = chain(store, body)
    task = asyncio.ensure_future(wf.orchestrate(S.A, workflow_id="current"))
    assert await task is S.DONE
    assert seen == [task] * 4


async def test_asyncio_timeout_works_inside_every_state(store: Any) -> None:
    # `asyncio.timeout` needs the current task; it raises RuntimeError outside one.
    entered: list[S] = []
    errors: list[BaseException] = []

    async def body(here: S) -> None:
        try:
            async with asyncio.timeout(5):
                entered.append(here)
        except RuntimeError as e:  # a retry would hide it
            errors.append(e)
            raise

    assert await chain(store, body).orchestrate(S.A, workflow_id="timeout") is S.DONE
    assert errors == []
    assert entered == CHAIN[:-1]


async def test_states_share_the_context_of_the_task_and_not_the_caller(store: Any) -> None:
    TRACE.set(("caller",))
    seen: list[tuple[str, ...]] = []

    async def body(here: S) -> None:
        seen.append(TRACE.get())
        if here is S.B:
            await asyncio.sleep(0)  # a bare yield to the loop in the middle
        TRACE.set((*TRACE.get(), here.name))

    wf = chain(store, body)
    assert await asyncio.create_task(wf.orchestrate(S.A, workflow_id="ctx")) is S.DONE
    assert seen == [
        ("caller",),
        ("caller", "A"),
        ("caller", "A", "B"),
        ("caller", "A", "B", "C"),
    ]
    assert TRACE.get() == ("caller",)  # the task ran in a copy of the caller's context


async def test_a_state_that_awaits_between_durable_states_is_resumed(store: Any) -> None:
    gate, in_b = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def body(here: S) -> None:
        order.append(f"enter {here.name}")
        if here is S.B:
            in_b.set()
            await gate.wait()
            order.append("gate passed")

    run = asyncio.create_task(chain(store, body).orchestrate(S.A, workflow_id="await"))
    await in_b.wait()
    await asyncio.sleep(0.05)
    assert order == ["enter A", "enter B"]
    assert not run.done()
    gate.set()
    assert await run is S.DONE
    assert order == ["enter A", "enter B", "gate passed", "enter C", "enter D"]


async def test_a_state_that_cancels_its_own_task_ends_the_run_cancelled_and_resumable(
    store: Any,
) -> None:
    cancelled_once = False

    async def body(here: S) -> None:
        nonlocal cancelled_once
        if here is S.B and not cancelled_once:
            cancelled_once = True
            task = asyncio.current_task()
            assert task is not None
            task.cancel()

    wf = chain(store, body)
    run = asyncio.create_task(wf.orchestrate(S.A, workflow_id="self-cancel"))
    with pytest.raises(asyncio.CancelledError):
        await run
    rows = [r.state for r in await store.load_run("self-cancel")]
    assert rows[:2] == ["A", "B"] and "DONE" not in rows
    assert await wf.resume_from("self-cancel") is S.DONE


async def test_cancelling_a_parked_run_from_outside_stops_it_and_it_resumes(store: Any) -> None:
    entered: list[S] = []
    stop = asyncio.Event()

    async def body(here: S) -> None:
        entered.append(here)
        if here is S.C:
            stop.set()

    wf = chain(store, body)
    run = asyncio.create_task(wf.orchestrate(S.A, workflow_id="outside"))
    await stop.wait()  # the run is in C: its next row is being written
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert "DONE" not in [r.state for r in await store.load_run("outside")]
    assert await wf.resume_from("outside") is S.DONE


async def test_a_failing_state_after_durable_states_raises_its_error(store: Any) -> None:
    class Boom(Exception):
        pass

    async def body(here: S) -> None:
        if here is S.D:
            raise Boom("D failed")

    with pytest.raises(cano.RetryExhaustedError, match=r"in state D .*Boom: D failed") as caught:
        await chain(store, body).orchestrate(S.A, workflow_id="boom")
    assert isinstance(caught.value.__cause__, Boom)
    rows = [r.state for r in await store.load_run("boom")]
    assert rows == ["A", "B", "C", "D"]


async def test_many_concurrent_runs_each_see_their_own_task(store: Any) -> None:
    seen: dict[str, set[asyncio.Task[Any] | None]] = {}
    run_id: contextvars.ContextVar[str] = contextvars.ContextVar("run_id")

    async def body(_: S) -> None:
        seen.setdefault(run_id.get(), set()).add(asyncio.current_task())

    wf = chain(store, body)

    async def one(i: int) -> tuple[S, asyncio.Task[Any] | None]:
        run_id.set(f"r{i}")
        return await wf.orchestrate(S.A, workflow_id=f"many-{i}"), asyncio.current_task()

    results = await asyncio.gather(*(one(i) for i in range(40)))
    for i, (end, task) in enumerate(results):
        assert end is S.DONE
        assert seen[f"r{i}"] == {task}


def long_chain(store: Any, n: int) -> tuple[cano.Workflow[Any], Any, Any]:
    """``n`` durable no-op states, then an exit: most of a run's time is spent parked."""
    states = enum.Enum("Long", [f"S{i}" for i in range(n + 1)])  # type: ignore[misc]
    members: list[Any] = list(states)

    def step(there: Any) -> Any:
        async def task() -> Any:
            return there

        return task

    wf = cano.Workflow[Any].bare()
    for here, there in itertools.pairwise(members):
        wf = wf.register(here, step(there))
    return wf.add_exit_state(members[-1]).with_checkpoint_store(store), members[0], members[-1]


async def test_a_total_timeout_stops_a_parked_run_and_it_resumes(store: Any) -> None:
    timed, first, _ = long_chain(store, 5_000)
    with pytest.raises(cano.WorkflowTimeoutError):
        await timed.with_total_timeout(0.05).orchestrate(first, workflow_id="total")
    rows = await store.load_run("total")
    assert 0 < len(rows) < 5_001
    plain, _, last = long_chain(store, 5_000)
    assert await plain.resume_from("total") is last


async def test_a_token_cancels_a_parked_run_and_it_resumes(store: Any) -> None:
    wf, first, last = long_chain(store, 5_000)
    token, handle = cano.CancellationToken.new()
    asyncio.get_running_loop().call_later(0.05, handle.cancel)
    with pytest.raises(cano.WorkflowCancelledError):
        await wf.orchestrate(first, workflow_id="token", cancel=token)
    rows = await store.load_run("token")
    assert 0 < len(rows) < 5_001
    assert await wf.resume_from("token") is last


INTERRUPTED_RUN = """
import asyncio, enum, itertools, sys
import cano
from cano.store import RedbCheckpointStore

S = enum.Enum("S", "A B C D DONE")
kind, path, raised = sys.argv[1], sys.argv[2], sys.argv[3]

def open_store():
    return RedbCheckpointStore(path) if kind == "redb" else cano.SqliteCheckpointStore(path)

def chain(store, fail):
    def step(here, there):
        async def task():
            if fail and here is S.C:
                raise {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[raised]()
            return there
        return task
    wf = cano.Workflow[S].bare()
    for here, there in itertools.pairwise(list(S)):
        wf = wf.register(here, step(here, there))
    return wf.add_exit_state(S.DONE).with_checkpoint_store(store)

store = open_store()
try:
    asyncio.run(chain(store, fail=True).orchestrate(S.A, workflow_id="stopped"))
    print("returned")
except BaseException as exc:
    print("raised", type(exc).__name__)
store.close()
store = open_store()
print("resumed", asyncio.run(chain(store, fail=False).resume_from("stopped")).name)
store.close()
"""


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("kind", ["redb", "sqlite"])
def test_a_keyboard_interrupt_in_a_state_stops_the_loop_and_the_run_resumes(
    kind: str, raised: str, tmp_path: Path
) -> None:
    # asyncio lets these two out of a task step and stops the loop only because they
    # propagate; swallowed, `asyncio.run` would wait forever. A real process, with a timeout.
    path = tmp_path / ("stopped.redb" if kind == "redb" else "stopped.db")
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_RUN, kind, str(path), raised],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.split("\n")[:2] == [f"raised {raised}", "resumed DONE"], done.stderr
