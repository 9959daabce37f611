"""Every loop the engine drives yields to the event loop, and nothing the engine waits on can
outlive a run's total timeout or its cancellation token (issue 10, liveness).

Each test builds a loop that never suspends by itself — before, such a loop spun at 100 %
CPU and `asyncio.wait_for` / `with_total_timeout` never fired. The timeouts below are what
is being tested (that they fire at all), not how fast anything is; pytest-timeout is the
safety net should a loop spin again.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import cano
import pytest
from cano.store import CheckpointRow, InMemoryCheckpointStore

pytestmark = pytest.mark.timeout(60)


class S(enum.Enum):
    A = enum.auto()
    B = enum.auto()
    DONE = enum.auto()


async def to_done() -> S:
    return S.DONE


def flow(state_a: Any, *, stepped: bool = False) -> cano.Workflow[S]:
    wf = cano.Workflow[S].bare()
    if stepped:
        wf.register_stepped(S.A, state_a)
    else:
        wf.register(S.A, state_a)
    return wf.add_exit_state(S.DONE)


async def test_a_poll_that_never_suspends_still_lets_wait_for_fire() -> None:
    class Forever(cano.PollTask[S]):
        async def poll(self, res: cano.Resources[Any]) -> cano.Ready[S] | cano.Pending:
            return cano.Pending()  # re-poll at once, without awaiting anything

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flow(Forever()).orchestrate(S.A), 0.2)


async def test_a_failing_poll_under_retry_on_error_still_lets_wait_for_fire() -> None:
    class Broken(cano.PollTask[S]):
        def on_poll_error(self) -> cano.PollErrorPolicy:
            return cano.PollErrorPolicy.retry_on_error(10**9)

        async def poll(self, res: cano.Resources[Any]) -> cano.Ready[S] | cano.Pending:
            raise RuntimeError("down")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flow(Broken()).orchestrate(S.A), 0.2)


async def test_a_stepped_task_without_a_store_still_lets_the_total_timeout_fire() -> None:
    class Endless(cano.SteppedTask[S, int]):
        async def step(self, res: cano.Resources[Any], cursor: int | None) -> Any:
            return cano.More((cursor or 0) + 1)

    wf = flow(Endless(), stepped=True).with_total_timeout(0.2)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(S.A)


async def test_zero_delay_retries_still_let_the_total_timeout_fire() -> None:
    calls = 0

    async def fails() -> S:
        nonlocal calls
        calls += 1
        raise RuntimeError("again")

    task = cano.task(fails, config=cano.TaskConfig().with_fixed_retry(10**9, 0))
    wf = flow(task).with_total_timeout(0.2)
    with pytest.raises(cano.WorkflowTimeoutError):
        await wf.orchestrate(S.A)
    assert calls > 1


class HangingStore(InMemoryCheckpointStore):
    """A custom store whose append (from sequence ``append_at``) or first clear never
    completes."""

    def __init__(self, *, append_at: int | None = None, clear: bool = False) -> None:
        super().__init__()
        self.append_at = append_at
        self.hang_clear = clear

    async def append(self, row: CheckpointRow) -> None:
        if self.append_at is not None and row.sequence >= self.append_at:
            await asyncio.Event().wait()
        await super().append(row)

    async def clear(self, workflow_id: str) -> None:
        if self.hang_clear:
            self.hang_clear = False
            await asyncio.Event().wait()
        await super().clear(workflow_id)


def durable(store: Any) -> cano.Workflow[S]:
    async def to_b() -> S:
        return S.B

    wf = cano.Workflow[S].bare().register(S.A, to_b).register(S.B, to_done)
    return wf.add_exit_state(S.DONE).with_checkpoint_store(store)


async def test_the_total_timeout_interrupts_an_append_that_never_completes() -> None:
    store = HangingStore(append_at=1)
    wf = durable(store).with_total_timeout(0.2)
    with pytest.raises(cano.WorkflowTimeoutError) as info:
        await wf.orchestrate(S.A, workflow_id="w")
    assert info.value.state == "B"
    assert [r.state for r in await store.load_run("w")] == ["A"]  # the log is kept


async def test_the_token_interrupts_an_append_that_never_completes() -> None:
    store = HangingStore(append_at=1)
    token, handle = cano.CancellationToken.new()
    run = asyncio.create_task(durable(store).orchestrate(S.A, workflow_id="w", cancel=token))
    while len(store) < 1:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run


async def test_a_timeout_while_clearing_the_log_is_too_late_to_change_the_outcome() -> None:
    store = HangingStore(clear=True)
    wf = durable(store).with_total_timeout(0.2)
    assert await wf.orchestrate(S.A, workflow_id="w") is S.DONE
    for _ in range(100):  # the clear is finished in the background
        if await store.load_run("w") == []:
            break
        await asyncio.sleep(0.01)
    assert await store.load_run("w") == []


async def test_a_million_transitions_keep_a_bounded_path() -> None:
    n = 0

    async def loop() -> S:
        nonlocal n
        n += 1
        if n == 200_000:
            raise RuntimeError("stop here")
        return S.A

    wf = flow(cano.task(loop, config=cano.TaskConfig.minimal()))
    with pytest.raises(cano.TaskError) as info:
        await wf.orchestrate(S.A)
    path = info.value.path
    assert path is not None
    assert len(path) == 10_000  # the last 10,000 states entered
    assert path[-1] == info.value.state == "A"
