"""Client.enqueue and Worker in one process (API.md §14.2-14.7), on both queue stores.

Real processes killed with SIGKILL or frozen with SIGSTOP are in
``tests/crash/test_worker_processes.py``.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cano
import pytest
from cano import RunStatus
from cano.records import FENCE
from pg_server import postgres_store


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


@pytest.fixture
def store(record_store: Any) -> Any:
    """The stores that keep run records (conftest's ``record_store``), by a shorter name."""
    return record_store


def orders(a: Any = None, b: Any = None, *, name: str = "orders") -> cano.Workflow[S]:
    async def default_a(res: cano.Resources) -> S:
        return S.B

    async def default_b(res: cano.Resources) -> S:
        return S.DONE

    minimal = cano.TaskConfig.minimal()
    return (
        cano.Workflow[S](cano.Resources.empty(), name=name)
        .register(S.A, cano.task(name="a", config=minimal)(a or default_a))
        .register(S.B, cano.task(name="b", config=minimal)(b or default_b))
        .add_exit_state(S.DONE)
    )


def parked(started: asyncio.Event) -> Any:
    """A task that says it started, then waits until it is cancelled."""

    async def a(res: cano.Resources) -> S:
        started.set()
        await asyncio.sleep(60)
        return S.B

    return a


def worker(store: Any, *workflows: cano.Workflow[S], **options: Any) -> cano.Worker:
    options.setdefault("poll_interval", 0.02)
    options.setdefault("lease", 5)
    return cano.Worker(store, list(workflows), **options)


async def test_enqueued_runs_are_run_by_a_worker_with_their_input(store: Any) -> None:
    client = cano.Client(store)
    seen: list[tuple[str, Any, int, str]] = []

    async def a(res: cano.Resources) -> S:
        ctx = cano.current_run()
        seen.append((ctx.workflow_id, ctx.input, ctx.attempt, ctx.worker_id))
        return S.B

    pending = await client.enqueue("orders", S.A, workflow_id="o-1", input={"sku": [1, 2]})
    assert pending.status is RunStatus.PENDING and pending.attempts == 0
    assert pending.input == {"sku": [1, 2]} and pending.queue == "default"
    again = await client.enqueue("orders", "A", workflow_id="o-1", input="other")
    assert again.input == {"sku": [1, 2]}  # idempotent: the first one stands
    async with worker(store, orders(a), worker_id="w1"):
        info = await client.wait("o-1", timeout=30)
    assert info.status is RunStatus.COMPLETED and info.final_state == "DONE"
    assert info.attempts == 1 and info.owner is None
    assert seen == [("o-1", {"sku": [1, 2]}, 1, "w1")]
    assert [s.state for s in await client.steps("o-1")] == ["A", "B", "DONE"]
    with pytest.raises(LookupError):
        cano.current_run()


async def test_priority_and_at_decide_what_is_claimed_first(store: Any) -> None:
    client = cano.Client(store)
    order: list[str] = []

    async def a(res: cano.Resources) -> S:
        order.append(cano.current_run().workflow_id)
        return S.B

    later = datetime.now(UTC) + timedelta(hours=1)
    await client.enqueue("orders", S.A, workflow_id="late", at=later)
    await client.enqueue("orders", S.A, workflow_id="low", priority=5)
    await client.enqueue("orders", S.A, workflow_id="high", priority=-1)
    async with worker(store, orders(a), concurrency=1):
        await client.wait("low", timeout=30)
        await asyncio.sleep(0.1)
    assert order == ["high", "low"]
    late = await client.get("late")
    assert late is not None and late.status is RunStatus.PENDING  # not due yet


async def test_a_worker_serves_only_its_workflows_and_queues(store: Any) -> None:
    client = cano.Client(store)
    await client.enqueue("orders", S.A, workflow_id="mine")
    await client.enqueue("refunds", S.A, workflow_id="not-mine")
    await client.enqueue("orders", S.A, workflow_id="other-queue", queue="bulk")
    async with worker(store, orders()):
        await client.wait("mine", timeout=30)
        await asyncio.sleep(0.1)
    for workflow_id in ("not-mine", "other-queue"):
        info = await client.get(workflow_id)
        assert info is not None and info.status is RunStatus.PENDING
    async with worker(store, orders(), queues=["bulk"]):
        assert (await client.wait("other-queue", timeout=30)).status is RunStatus.COMPLETED


async def test_a_queue_cap_holds_across_workers(store: Any) -> None:
    client = cano.Client(store)
    await client.set_queue("default", concurrency=2)
    running, peak = 0, 0
    gate = asyncio.Event()

    async def a(res: cano.Resources) -> S:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return S.B

    for i in range(6):
        await client.enqueue("orders", S.A, workflow_id=f"q{i}")
    wf = orders(a)
    async with worker(store, wf, concurrency=4), worker(store, wf, concurrency=4):
        for _ in range(1000):  # until the workers have claimed what the cap allows
            if running == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # several more polls of both workers
        assert running == 2  # four slots free in each, but the queue allows two
        gate.set()
        for i in range(6):
            await client.wait(f"q{i}", timeout=30)
    assert peak == 2
    await client.set_queue("default", concurrency=None)


async def test_cancel_a_pending_run_and_a_running_one(store: Any) -> None:
    client = cano.Client(store)
    started = asyncio.Event()
    a = parked(started)

    await client.enqueue("orders", S.A, workflow_id="never", at=datetime.now(UTC) + timedelta(1))
    info = await client.cancel("never")
    assert info.status is RunStatus.CANCELLED
    await client.enqueue("orders", S.A, workflow_id="busy")
    async with worker(store, orders(a)):
        await started.wait()
        await client.cancel("busy")
        info = await client.wait("busy", timeout=30)
    assert info.status is RunStatus.CANCELLED and info.state == "A"
    assert info.error_type == "WorkflowCancelledError"
    with pytest.raises(cano.WorkflowError, match="nobody"):
        await client.cancel("nobody")


async def test_stop_gives_unfinished_runs_back_and_another_worker_resumes_them(
    store: Any,
) -> None:
    client = cano.Client(store)
    calls: list[str] = []
    hold = {"on": True}

    async def b(res: cano.Resources) -> S:
        calls.append(cano.current_run().worker_id)
        if hold["on"]:
            await asyncio.sleep(60)
        return S.DONE

    await client.enqueue("orders", S.A, workflow_id="handed-over")
    first = worker(store, orders(b=b), worker_id="first")
    first.start()
    while not calls:
        await asyncio.sleep(0.01)
    await first.stop(grace=0.05)  # b does not finish in time: cancelled, lease given back
    info = await client.get("handed-over")
    assert info is not None and info.status is RunStatus.RUNNING
    hold["on"] = False
    async with worker(store, orders(b=b), worker_id="second"):
        info = await client.wait("handed-over", timeout=30)
    assert info.status is RunStatus.COMPLETED and info.attempts == 2
    assert calls == ["first", "second"]  # A was not run again, B was (in flight)


async def test_a_write_under_a_lost_lease_is_refused_and_the_run_abandoned(store: Any) -> None:
    client = cano.Client(store)
    await client.enqueue("orders", S.A, workflow_id="stolen")
    [claim] = await store.claim_runs("old", ("orders",), ("default",), 1, 0.01)
    await asyncio.sleep(0.05)  # the lease expires
    [again] = await store.claim_runs("new", ("orders",), ("default",), 1, 30)
    assert again.epoch == claim.epoch + 1

    async def as_old_owner() -> None:
        FENCE.set(("old", claim.epoch))
        await orders().with_checkpoint_store(store).orchestrate(S.A, workflow_id="stolen")

    with pytest.raises(cano.LeaseLostError):
        await asyncio.create_task(as_old_owner())
    assert await store.load_run("stolen") == []  # nothing was written
    info = await client.get("stolen")
    assert info is not None and info.status is RunStatus.RUNNING and info.owner == "new"


async def test_a_run_whose_lease_is_taken_mid_state_writes_no_further_row(store: Any) -> None:
    """The lease is lost while a state's task runs: the next state's row is refused
    (LeaseLostError), that state never runs, and the log ends where the old owner left it."""
    client = cano.Client(store)
    await client.enqueue("orders", S.A, workflow_id="taken-mid-run")
    [claim] = await store.claim_runs("old", ("orders",), ("default",), 1, 0.05)
    in_a, go_on = asyncio.Event(), asyncio.Event()
    ran_b: list[str] = []

    async def a(res: cano.Resources) -> S:
        in_a.set()
        await go_on.wait()
        return S.B

    async def b(res: cano.Resources) -> S:
        ran_b.append("b")
        return S.DONE

    async def as_old_owner() -> None:
        FENCE.set(("old", claim.epoch))
        flow = orders(a=a, b=b).with_checkpoint_store(store)
        await flow.orchestrate(S.A, workflow_id="taken-mid-run")

    running = asyncio.create_task(as_old_owner())
    await in_a.wait()  # A's row is written under the old lease
    await asyncio.sleep(0.1)  # which expires
    [again] = await store.claim_runs("new", ("orders",), ("default",), 1, 30)
    assert again.epoch == claim.epoch + 1
    go_on.set()
    with pytest.raises(cano.LeaseLostError):
        await running
    assert ran_b == []
    assert [r.state for r in await store.load_run("taken-mid-run")] == ["A"]


async def test_a_worker_that_lost_its_run_compensates_nothing(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = cano.Client(store)
    undone: list[Any] = []
    started, fail_now = asyncio.Event(), asyncio.Event()

    class Reserve(cano.CompensatableTask[S, dict[str, int]]):
        def name(self) -> str:
            return "reserve"

        def config(self) -> cano.TaskConfig:
            return cano.TaskConfig.minimal()

        async def run(self, res: cano.Resources[Any]) -> tuple[S, dict[str, int]]:
            return S.B, {"hold": 1}

        async def compensate(self, res: cano.Resources[Any], output: dict[str, int]) -> None:
            undone.append(output)

    async def charge(res: cano.Resources) -> S:
        started.set()
        await fail_now.wait()
        raise RuntimeError("card declined")  # a failure that would compensate the hold

    wf = (
        cano.Workflow[S](cano.Resources.empty(), name="orders")
        .register_with_compensation(S.A, Reserve())
        .register(S.B, cano.task(name="charge", config=cano.TaskConfig.minimal())(charge))
        .add_exit_state(S.DONE)
    )
    await client.enqueue("orders", S.A, workflow_id="saga")
    # No renewal meanwhile; and, full with this run, it cannot claim the run back before the
    # thief does once its lease is given back (a poll in between would take it over).
    old = worker(store, wf, worker_id="old", poll_interval=1, concurrency=1)
    old.start()
    await started.wait()
    [(_, epoch)] = [(i, o.claim.epoch) for i, o in old._owned.items()]
    # The lease runs out (given back here, as if the worker had been frozen past it) and
    # another worker takes the run over.
    await store.release_leases("old", [("saga", epoch)])
    [taken] = await store.claim_runs("thief", ("orders",), ("default",), 1, 30)
    assert taken.epoch == epoch + 1
    fail_now.set()
    while old.running:
        await asyncio.sleep(0.01)
    await old.stop()
    assert undone == []  # the hold is the new owner's to keep or undo
    info = await client.get("saga")
    assert info is not None and (info.status, info.owner) == (RunStatus.RUNNING, "thief")
    assert "abandoned run saga" in caplog.text


async def test_an_enqueue_wakes_an_idle_postgres_worker_before_its_next_poll() -> None:
    async with postgres_store() as store:
        client = cano.Client(store)
        # Polling once an hour: only the NOTIFY of the enqueue can start the run at all.
        async with worker(store, orders(), poll_interval=3600, lease=7200):
            await asyncio.sleep(0.3)  # idle: its first poll found nothing
            await client.enqueue("orders", S.A, workflow_id="woken")
            info = await client.wait("woken")  # no timing bound: it ends, or the test hangs
        assert info.status is RunStatus.COMPLETED


async def test_a_worker_that_cannot_renew_stops_its_runs_before_the_lease_runs_out() -> None:
    class Unreachable(cano.InMemoryCheckpointStore):
        async def renew_leases(self, *args: Any) -> tuple[list[str], list[str]]:
            await asyncio.Event().wait()  # the store stopped answering
            raise AssertionError("unreachable")

    store = Unreachable()
    client = cano.Client(store)
    started, stopped = asyncio.Event(), asyncio.Event()

    async def a(res: cano.Resources) -> S:
        started.set()
        try:
            await asyncio.sleep(60)  # a side effect in progress
        except asyncio.CancelledError:
            stopped.set()
            raise
        return S.B

    await client.enqueue("orders", S.A, workflow_id="cut-off")
    w = worker(store, orders(a), lease=0.6, poll_interval=0.1)
    w.start()
    await started.wait()
    await asyncio.wait_for(stopped.wait(), 30)  # stopped, not left running on
    info = await client.get("cut-off")
    await w.stop(grace=0.2)  # its tick is stuck on the store: not waited for long
    assert info is not None and info.status is RunStatus.RUNNING  # for another to take over


async def test_bad_arguments_are_refused(store: Any, tmp_path: Path) -> None:
    client = cano.Client(store)
    with pytest.raises(cano.ConfigurationError, match="name"):
        cano.Worker(store, [cano.Workflow[S].bare().register(S.A, orders)])  # type: ignore[arg-type]
    with pytest.raises(cano.ConfigurationError, match="poll_interval"):
        cano.Worker(store, [orders()], lease=1, poll_interval=1)
    with pytest.raises(cano.ConfigurationError, match="concurrency"):
        cano.Worker(store, [orders()], concurrency=0)
    with pytest.raises(cano.ConfigurationError, match="two workflows"):
        cano.Worker(store, [orders(), orders()])
    with (
        cano.RedbCheckpointStore(tmp_path / "x.redb") as redb,
        pytest.raises(cano.ConfigurationError, match="another store"),
    ):
        cano.Worker(store, [orders().with_checkpoint_store(redb)])
    with pytest.raises(cano.ConfigurationError, match="input"):
        await client.enqueue("orders", S.A, input={1, 2})

    class Size(enum.IntEnum):
        BIG = 1

    # Equal to 1, but it would come back an int: refused like a lossy cursor.
    with pytest.raises(cano.ConfigurationError, match="would not come back unchanged"):
        await client.enqueue("orders", S.A, input={"size": Size.BIG})
    with pytest.raises(cano.ConfigurationError, match="at"):
        await client.enqueue("orders", S.A, at=datetime.now())
    with pytest.raises(cano.ConfigurationError, match="concurrency"):
        await client.set_queue("default", concurrency=0)


async def test_a_run_enqueued_at_an_unknown_state_fails_once(store: Any) -> None:
    client = cano.Client(store)
    await client.enqueue("orders", "NOWHERE", workflow_id="lost")
    async with worker(store, orders()):
        info = await client.wait("lost", timeout=30)
    assert info.status is RunStatus.FAILED and info.error_type == "ConfigurationError"
    assert info.error is not None and "NOWHERE" in info.error


async def test_a_run_a_worker_owns_cannot_be_resumed_by_hand(store: Any) -> None:
    client = cano.Client(store)
    started = asyncio.Event()
    a = parked(started)

    await client.enqueue("orders", S.A, workflow_id="owned")
    async with worker(store, orders(a)):
        await started.wait()
        by_hand = orders().with_checkpoint_store(store)
        with pytest.raises(cano.CheckpointError, match="owned by worker"):
            await by_hand.resume_from("owned")
        await client.cancel("owned")
        assert (await client.wait("owned", timeout=30)).status is RunStatus.CANCELLED
