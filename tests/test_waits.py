"""Wait states (API.md §15): signals consumed durably, kept when early, deduplicated, timed
out; on every store that keeps signals."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import cano
import pytest
from cano import RunStatus


class S(enum.Enum):
    ASK = enum.auto()
    APPROVAL = enum.auto()
    SHIP = enum.auto()
    REJECTED = enum.auto()
    DONE = enum.auto()


@pytest.fixture
def store(record_store: Any) -> Any:
    return record_store


class Approval(cano.WaitTask[S]):
    signal = "approval"

    def __init__(self, seen: list[Any], *, timeout: float | None = None, fail: int = 0) -> None:
        self.seen, self.limit, self.fail = seen, timeout, fail

    def timeout(self) -> float | None:
        return self.limit

    async def on_signal(self, res: cano.Resources[Any], payload: Any) -> S:
        self.seen.append(payload)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("crashed while handling the approval")
        return S.SHIP if payload.get("ok") else S.REJECTED

    async def on_timeout(self, res: cano.Resources[Any]) -> S:
        self.seen.append("timed out")
        return S.REJECTED


def flow(store: Any, wait: cano.WaitTask[S], gate: asyncio.Event | None = None) -> cano.Workflow[S]:
    async def ask() -> S:
        if gate is not None:
            await gate.wait()  # the run reaches its wait only once the test says so
        return S.APPROVAL

    async def ship() -> S:
        return S.DONE

    minimal = cano.TaskConfig.minimal()
    wf = (
        cano.Workflow[S](cano.Resources.empty(), name="orders")
        .register(S.ASK, cano.task(name="ask", config=minimal)(ask))
        .register_wait(S.APPROVAL, wait)
        .register(S.SHIP, cano.task(name="ship", config=minimal)(ship))
        .add_exit_state(S.DONE)
        .add_exit_state(S.REJECTED)
    )
    return wf if store is None else wf.with_checkpoint_store(store)


async def started(client: cano.Client, run_id: str) -> None:
    """Until the run has a record (so that a signal to it is not refused)."""
    for _ in range(2000):
        if await client.get(run_id) is not None:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{run_id} never started")


async def test_a_run_waits_for_its_signal_and_moves_on_with_the_payload(store: Any) -> None:
    client, seen = cano.Client(store), []
    run = asyncio.ensure_future(flow(store, Approval(seen)).orchestrate(S.ASK, workflow_id="o1"))
    await started(client, "o1")
    await asyncio.sleep(0.05)
    assert not run.done()  # waiting
    await client.signal("o1", "approval", {"ok": True, "by": "ana"})
    assert await asyncio.wait_for(run, 10) is S.DONE
    assert seen == [{"ok": True, "by": "ana"}]
    steps = await client.steps("o1")
    assert [s.state for s in steps][:2] == ["ASK", "APPROVAL"]
    assert (await client.get("o1")).status is RunStatus.COMPLETED  # type: ignore[union-attr]


async def test_a_signal_sent_early_is_kept_and_a_resend_with_its_key_is_ignored(
    store: Any,
) -> None:
    client, seen = cano.Client(store), []

    gate = asyncio.Event()  # the signals arrive before the run reaches the wait
    wf = flow(store, Approval(seen), gate)
    run = asyncio.ensure_future(wf.orchestrate(S.ASK, workflow_id="o2"))
    await started(client, "o2")
    await client.signal("o2", "approval", {"ok": False}, dedup_key="k1")
    await client.signal("o2", "approval", {"ok": True}, dedup_key="k1")  # a resend: no-op
    await client.signal("o2", "other", {"ok": True})  # another name: not this wait's
    gate.set()
    assert await asyncio.wait_for(run, 10) is S.REJECTED
    assert seen == [{"ok": False}]


async def test_the_deadline_takes_on_timeout(store: Any) -> None:
    seen: list[Any] = []
    wf = flow(store, Approval(seen, timeout=0.1))
    assert await asyncio.wait_for(wf.orchestrate(S.ASK, workflow_id="o3"), 10) is S.REJECTED
    assert seen == ["timed out"]


async def test_a_resumed_run_gets_the_payload_it_consumed_never_the_next_one(
    store: Any,
) -> None:
    client, seen = cano.Client(store), []
    wait = Approval(seen, fail=1)  # the first on_signal "crashes"
    gate = asyncio.Event()  # both signals are there before the wait
    wf = flow(store, wait, gate)
    run = asyncio.ensure_future(wf.orchestrate(S.ASK, workflow_id="o4"))
    await started(client, "o4")
    await client.signal("o4", "approval", {"ok": True, "n": 1})
    await client.signal("o4", "approval", {"ok": False, "n": 2})
    gate.set()
    with pytest.raises(cano.TaskError):
        await asyncio.wait_for(run, 10)
    assert (await client.get("o4")).status is RunStatus.FAILED  # type: ignore[union-attr]
    assert await wf.resume_from("o4") is S.DONE  # the same approval, handled this time
    assert seen == [{"ok": True, "n": 1}, {"ok": True, "n": 1}]


async def test_a_signal_to_an_unknown_or_ended_run_is_refused(store: Any) -> None:
    client = cano.Client(store)
    with pytest.raises(cano.WorkflowError, match="no run 'nobody'"):
        await client.signal("nobody", "approval", {})
    wf = flow(store, Approval([], timeout=0.01))
    await wf.orchestrate(S.ASK, workflow_id="ended")
    with pytest.raises(cano.WorkflowError, match="has ended"):
        await client.signal("ended", "approval", {})
    with pytest.raises(cano.ConfigurationError, match=r"signal\(payload\)"):
        await client.signal("ended", "approval", {1, 2})  # a set: not JSON


async def test_a_wait_state_needs_a_signal_name_and_a_store() -> None:
    class Nameless(cano.WaitTask[S]):
        pass

    with pytest.raises(cano.ConfigurationError, match="signal"):
        cano.Workflow[S].bare().register_wait(S.APPROVAL, Nameless())
    wf = flow(None, Approval([]))
    with pytest.raises(cano.ConfigurationError, match="needs a checkpoint store"):
        await wf.orchestrate(S.ASK)


async def test_a_worker_runs_a_wait_state_and_a_signal_ends_it(store: Any) -> None:
    client, seen = cano.Client(store), []
    wf = flow(store, Approval(seen))
    await client.enqueue("orders", S.ASK, workflow_id="w1")
    async with cano.Worker(store, [wf], poll_interval=0.05, lease=5):
        await asyncio.sleep(0.2)
        await client.signal("w1", "approval", {"ok": True})
        info = await client.wait("w1", timeout=10)
    assert info.status is RunStatus.COMPLETED and seen == [{"ok": True}]


def test_the_graph_marks_wait_states() -> None:
    assert "waits for signal approval" in flow(None, Approval([])).to_mermaid()


async def test_a_waiting_run_is_parked_and_frees_its_worker_slot(store: Any) -> None:
    client, seen, ran = cano.Client(store), [], []

    async def quick() -> S:
        ran.append(cano.current_run().workflow_id)
        return S.DONE

    other = (
        cano.Workflow[S](cano.Resources.empty(), name="quick")
        .register(S.ASK, cano.task(name="quick", config=cano.TaskConfig.minimal())(quick))
        .add_exit_state(S.DONE)
        .with_checkpoint_store(store)
    )
    await client.enqueue("orders", S.ASK, workflow_id="waits")
    async with cano.Worker(
        store, [flow(store, Approval(seen)), other], concurrency=1, poll_interval=0.05, lease=5
    ):
        for _ in range(400):  # until the run is parked
            info = await client.get("waits")
            if info is not None and info.status is RunStatus.WAITING:
                break
            await asyncio.sleep(0.02)
        assert info is not None and (info.status, info.state, info.waiting_for, info.owner) == (
            RunStatus.WAITING,
            "APPROVAL",
            "approval",
            None,
        )
        assert info.wake_at is None  # no deadline: only the signal wakes it
        for i in range(3):  # the one slot serves other runs meanwhile
            await client.enqueue("quick", S.ASK, workflow_id=f"q{i}")
        for i in range(3):
            assert (await client.wait(f"q{i}", timeout=10)).status is RunStatus.COMPLETED
        await client.signal("waits", "approval", {"ok": True})
        done = await client.wait("waits", timeout=10)
    assert done.status is RunStatus.COMPLETED and seen == [{"ok": True}]
    assert done.waiting_for is None and done.attempts == 2  # woken: resumed once


async def test_a_parked_run_wakes_at_its_deadline(store: Any) -> None:
    client, seen = cano.Client(store), []
    await client.enqueue("orders", S.ASK, workflow_id="late")
    async with cano.Worker(
        store, [flow(store, Approval(seen, timeout=0.5))], poll_interval=0.05, lease=5
    ):
        info = None
        for _ in range(400):
            info = await client.get("late")
            if info is not None and info.status is RunStatus.WAITING:
                break
            await asyncio.sleep(0.01)
        assert info is not None and info.wake_at is not None  # parked until its deadline
        done = await client.wait("late", timeout=10)
    assert done.status is RunStatus.COMPLETED and seen == ["timed out"]


async def test_ten_thousand_parked_runs_hold_nothing_in_the_worker(tmp_path: Any) -> None:
    n = 10_000
    async with cano.SqliteCheckpointStore(tmp_path / "parked.db") as store:
        client = cano.Client(store)
        await asyncio.gather(
            *(client.enqueue("orders", S.ASK, workflow_id=f"p{i}") for i in range(n))
        )
        worker = cano.Worker(
            store, [flow(store, Approval([]))], concurrency=64, poll_interval=0.05, lease=30
        )
        async with worker:
            while await client.list(status=[RunStatus.PENDING, RunStatus.RUNNING], limit=1):
                await asyncio.sleep(0.05)
            parked = await client.list(status=RunStatus.WAITING, limit=n + 1)
            assert len(parked) == n
            # They are rows in the store: the worker holds no run, and no task per run.
            assert worker.running == 0
            assert len(asyncio.all_tasks()) < 20
            await client.signal("p7", "approval", {"ok": True})
            assert (await client.wait("p7", timeout=30)).status is RunStatus.COMPLETED


class Nap(cano.TimerTask[S]):
    def __init__(self, seconds: float) -> None:
        self.seconds, self.asked, self.woke = seconds, 0, []

    async def wait(self, res: cano.Resources[Any]) -> float:
        self.asked += 1
        return self.seconds

    async def after_wait(self, res: cano.Resources[Any]) -> S:
        self.woke.append(asyncio.get_running_loop().time())
        return S.DONE


def napping(store: Any, nap: Nap) -> cano.Workflow[S]:
    return (
        cano.Workflow[S](cano.Resources.empty(), name="naps")
        .register(S.ASK, nap)
        .add_exit_state(S.DONE)
        .with_checkpoint_store(store)
    )


async def test_a_resumed_timer_waits_for_what_is_left_of_its_recorded_wait(store: Any) -> None:
    nap = Nap(0.4)
    run = asyncio.ensure_future(napping(store, nap).orchestrate(S.ASK, workflow_id="nap"))
    await asyncio.sleep(0.1)
    run.cancel()  # the process "dies" mid-wait: the run stays RUNNING, resumable
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await napping(store, nap).resume_from("nap") is S.DONE
    assert nap.asked == 1  # the deadline was recorded once, not asked for again
    steps = await cano.Client(store).steps("nap")
    [cursor] = [s for s in steps if s.kind is cano.RowKind.STEP_CURSOR]
    assert set(cursor.output) == {"until"}


async def test_a_timer_longer_than_the_lease_parks_the_run(store: Any) -> None:
    client, nap = cano.Client(store), Nap(1.5)
    await client.enqueue("naps", S.ASK, workflow_id="long-nap")
    async with cano.Worker(store, [napping(store, nap)], poll_interval=0.1, lease=0.6):
        info = None
        for _ in range(400):
            info = await client.get("long-nap")
            if info is not None and info.status is RunStatus.WAITING:
                break
            await asyncio.sleep(0.01)
        assert info is not None and info.status is RunStatus.WAITING
        assert info.waiting_for is None and info.wake_at is not None and info.owner is None
        done = await client.wait("long-nap", timeout=30)
    assert done.status is RunStatus.COMPLETED and nap.asked == 1 and len(nap.woke) == 1
