"""BatchTask: load, process_item for each item (bounded concurrency, per-item retry) → finish."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from typing import Any

import cano
import pytest
from cano.batch import _drive_batch


class S(enum.Enum):
    START = enum.auto()
    DONE = enum.auto()
    PARTIAL = enum.auto()


MINIMAL = cano.TaskConfig.minimal()


def one_state(task: Any) -> cano.Workflow[S]:
    return cano.Workflow.bare().register(S.START, task).add_exit_states([S.DONE, S.PARTIAL])


class Batch(cano.BatchTask[S, int, int]):
    """A scripted batch: doubles each item; ``delays[i]`` seconds per item, ``poison`` fails.

    ``flaky[i] = k`` makes item ``i`` fail its first ``k`` attempts.
    """

    def __init__(
        self,
        items: Sequence[int],
        *,
        width: int = 1,
        retry: cano.RetryMode | None = None,
        config: cano.TaskConfig = MINIMAL,
        delays: dict[int, float] | None = None,
        poison: frozenset[int] = frozenset(),
        flaky: dict[int, int] | None = None,
    ) -> None:
        self.items = list(items)
        self.width = width
        self.retry = retry
        self._config = config
        self.delays = delays or {}
        self.poison = poison
        self.flaky = dict(flaky or {})
        self.loads = 0
        self.finishes = 0
        self.calls: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.results: list[int | BaseException] | None = None

    def config(self) -> cano.TaskConfig:
        return self._config

    def concurrency(self) -> int:
        return self.width

    def item_retry(self) -> cano.RetryMode:
        return self.retry if self.retry is not None else super().item_retry()

    async def load(self, res: cano.Resources) -> Sequence[int]:
        self.loads += 1
        return self.items

    async def process_item(self, item: int) -> int:
        self.calls[item] = self.calls.get(item, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(item, 0))
            if item in self.poison:
                raise ValueError(f"poisoned {item} (attempt {self.calls[item]})")
            if self.flaky.get(item, 0) >= self.calls[item]:
                raise ConnectionError(f"flaky {item}")
            return item * 2
        finally:
            self.in_flight -= 1

    async def finish(self, res: cano.Resources, results: list[int | BaseException]) -> S:
        self.finishes += 1
        self.results = results
        return S.PARTIAL if any(isinstance(r, BaseException) for r in results) else S.DONE


# --------------------------------------------------------------------------------------------
# Defaults and registration
# --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    class B(cano.BatchTask[S, int, int]):
        pass

    b = B()
    assert b.concurrency() == 1
    assert b.item_retry() == cano.RetryMode.none()
    assert b.config().retry_mode == cano.TaskConfig().retry_mode
    assert b.name() == "test_defaults.<locals>.B"


async def test_missing_hooks_fail_with_configuration_error() -> None:
    class B(cano.BatchTask[S, int, int]):
        pass

    with pytest.raises(cano.ConfigurationError, match="load"):
        await _drive_batch(B(), cano.Resources.empty())


async def test_registered_with_plain_register() -> None:
    batch = Batch(range(5))
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.results == [0, 2, 4, 6, 8]
    assert batch.loads == batch.finishes == 1


# --------------------------------------------------------------------------------------------
# Ordering and concurrency
# --------------------------------------------------------------------------------------------


async def test_results_are_in_input_order_whatever_the_completion_order() -> None:
    n = 12
    # Earlier items take longer, so they complete last.
    batch = Batch(range(n), width=4, delays={i: 0.002 * (n - i) for i in range(n)})
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.results == [i * 2 for i in range(n)]


@pytest.mark.parametrize("width", [1, 3, 8])
async def test_in_flight_never_exceeds_concurrency(width: int) -> None:
    batch = Batch(range(30), width=width, delays=dict.fromkeys(range(30), 0.001))
    await one_state(batch).orchestrate(S.START)
    assert batch.max_in_flight == width  # reached, never exceeded


@pytest.mark.parametrize("width", [0, -5])
async def test_concurrency_below_one_counts_as_one(width: int) -> None:
    batch = Batch(range(6), width=width, delays=dict.fromkeys(range(6), 0.001))
    await one_state(batch).orchestrate(S.START)
    assert batch.max_in_flight == 1
    assert batch.results == [0, 2, 4, 6, 8, 10]


async def test_concurrency_larger_than_the_batch() -> None:
    batch = Batch(range(3), width=64, delays=dict.fromkeys(range(3), 0.001))
    await one_state(batch).orchestrate(S.START)
    assert batch.max_in_flight == 3
    assert batch.results == [0, 2, 4]


async def test_empty_batch_still_finishes() -> None:
    batch = Batch([], width=4)
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.results == []


async def test_load_may_return_any_sequence() -> None:
    class Tuple(Batch):
        async def load(self, res: cano.Resources) -> Sequence[int]:
            return (1, 2, 3)

    batch = Tuple([])
    await one_state(batch).orchestrate(S.START)
    assert batch.results == [2, 4, 6]


async def test_concurrency_must_be_an_int() -> None:
    class Bad(Batch):
        def concurrency(self) -> int:
            return "4"  # type: ignore[return-value]

    with pytest.raises(cano.ConfigurationError, match="concurrency"):
        await _drive_batch(Bad([1]), cano.Resources.empty())


# --------------------------------------------------------------------------------------------
# Item failures and per-item retry
# --------------------------------------------------------------------------------------------


async def test_poisoned_item_is_isolated_in_its_slot() -> None:
    batch = Batch(range(5), width=2, poison=frozenset({2}))
    assert await one_state(batch).orchestrate(S.START) is S.PARTIAL
    assert batch.results is not None
    bad = batch.results[2]
    assert type(bad) is ValueError  # the raw exception, not wrapped
    assert str(bad) == "poisoned 2 (attempt 1)"
    assert [r for i, r in enumerate(batch.results) if i != 2] == [0, 2, 6, 8]


async def test_flaky_item_succeeds_on_a_later_attempt() -> None:
    batch = Batch(range(4), width=2, retry=cano.RetryMode.fixed(2, 0.001), flaky={1: 2})
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.results == [0, 2, 4, 6]
    assert batch.calls == {0: 1, 1: 3, 2: 1, 3: 1}


async def test_permanent_failure_keeps_the_last_raw_exception() -> None:
    batch = Batch(range(3), retry=cano.RetryMode.fixed(2, 0), poison=frozenset({1}))
    await one_state(batch).orchestrate(S.START)
    assert batch.calls[1] == 3  # max_attempts of fixed(2, ...)
    assert batch.results is not None
    assert type(batch.results[1]) is ValueError
    assert str(batch.results[1]) == "poisoned 1 (attempt 3)"


async def test_without_item_retry_a_failing_item_is_tried_once() -> None:
    batch = Batch(range(3), flaky={0: 1})
    assert await one_state(batch).orchestrate(S.START) is S.PARTIAL
    assert batch.calls[0] == 1
    assert batch.results is not None
    assert isinstance(batch.results[0], ConnectionError)


async def test_item_retry_waits_between_attempts() -> None:
    batch = Batch([7], retry=cano.RetryMode.fixed(2, 0.03), flaky={7: 2})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await one_state(batch).orchestrate(S.START)
    assert loop.time() - t0 >= 0.055
    assert batch.results == [14]


# --------------------------------------------------------------------------------------------
# load / finish errors and the outer retry
# --------------------------------------------------------------------------------------------


async def test_load_error_fails_the_task_and_skips_finish() -> None:
    class Broken(Batch):
        async def load(self, res: cano.Resources) -> Sequence[int]:
            raise OSError("source down")

    batch = Broken([1])
    with pytest.raises(cano.TaskError) as info:
        await one_state(batch).orchestrate(S.START)
    assert isinstance(info.value.__cause__, OSError)
    assert batch.finishes == 0


async def test_finish_error_fails_the_task() -> None:
    class Broken(Batch):
        async def finish(self, res: cano.Resources, results: list[int | BaseException]) -> S:
            raise RuntimeError("cannot aggregate")

    with pytest.raises(cano.TaskError) as info:
        await one_state(Broken([1, 2])).orchestrate(S.START)
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_outer_retry_replays_the_whole_cycle() -> None:
    class FinishFailsOnce(Batch):
        async def finish(self, res: cano.Resources, results: list[int | BaseException]) -> S:
            if self.finishes == 0:
                self.finishes += 1
                raise RuntimeError("transient")
            return await super().finish(res, results)

    batch = FinishFailsOnce(range(3), width=2, config=cano.TaskConfig().with_fixed_retry(1, 0))
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.loads == 2
    assert batch.calls == {0: 2, 1: 2, 2: 2}  # every item processed again
    assert batch.results == [0, 2, 4]


async def test_default_config_retries_the_cycle() -> None:
    class LoadFailsOnce(Batch):
        async def load(self, res: cano.Resources) -> Sequence[int]:
            self.loads += 1
            if self.loads == 1:
                raise ConnectionError("blip")
            return self.items

        def config(self) -> cano.TaskConfig:
            return cano.BatchTask.config(self)  # the base default, TaskConfig()

    batch = LoadFailsOnce([1, 2])
    assert await one_state(batch).orchestrate(S.START) is S.DONE
    assert batch.loads == 2


# --------------------------------------------------------------------------------------------
# Timeouts and cancellation: the whole batch is one attempt
# --------------------------------------------------------------------------------------------


class Parked(cano.BatchTask[S, int, int]):
    """Items that wait forever; records which started and which were cancelled."""

    def __init__(self, n: int, width: int, config: cano.TaskConfig = MINIMAL) -> None:
        self.n = n
        self.width = width
        self._config = config
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.all_started = asyncio.Event()

    def config(self) -> cano.TaskConfig:
        return self._config

    def concurrency(self) -> int:
        return self.width

    async def load(self, res: cano.Resources) -> list[int]:
        return list(range(self.n))

    async def process_item(self, item: int) -> int:
        self.started.append(item)
        if len(self.started) == self.width:
            self.all_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        return item

    async def finish(self, res: cano.Resources, results: list[int | BaseException]) -> S:
        return S.DONE


async def test_attempt_timeout_bounds_the_whole_batch_and_cancels_items() -> None:
    batch = Parked(10, 3, MINIMAL.with_attempt_timeout(0.05))
    with pytest.raises(cano.TaskTimeoutError):
        await one_state(batch).orchestrate(S.START)
    assert sorted(batch.started) == [0, 1, 2]
    assert sorted(batch.cancelled) == [0, 1, 2]


async def test_cancellation_stops_every_item_in_flight() -> None:
    token, handle = cano.CancellationToken.new()
    batch = Parked(10, 4)
    run = asyncio.ensure_future(one_state(batch).orchestrate(S.START, cancel=token))
    await asyncio.wait_for(batch.all_started.wait(), 5)
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await run
    assert sorted(batch.cancelled) == [0, 1, 2, 3]
    # No worker is left behind.
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


async def test_drive_batch_directly_cancelled() -> None:
    batch = Parked(5, 2)
    driver = asyncio.ensure_future(_drive_batch(batch, cano.Resources.empty()))
    await asyncio.wait_for(batch.all_started.wait(), 5)
    driver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver
    assert sorted(batch.cancelled) == [0, 1]
