"""Batch tasks: load a bounded list, process every item with bounded concurrency, then decide.

A :class:`BatchTask` is one task attempt made of three phases::

    load(res) -> items  →  process_item(item) for each item  →  finish(res, results) -> state

Items run concurrently inside the attempt (at most ``concurrency()`` at a time), each with
its own retry policy (``item_retry()``); a failing item does not fail the task, its slot in
``results`` holds the exception instead. ``results`` is in input order. The task's own
``config()`` (default ``TaskConfig()``) retries the *whole* cycle: a failed ``load`` or
``finish`` re-runs ``load`` and every item again, so items are processed at least once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cano._core import RetryMode, TaskConfig
from cano.errors import ConfigurationError

if TYPE_CHECKING:
    from cano.resources import Resources

__all__ = ["BatchTask"]

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - item, as in the API
O = TypeVar("O")  # noqa: E741 - output, as in the API


class BatchTask(Generic[S, I, O]):
    """Processes a bounded list of items, then returns the next state from their results.

    Override ``load``, ``process_item`` and ``finish``; optionally ``concurrency()`` (items
    in flight at once, default 1) and ``item_retry()`` (per-item retry, default none).
    Register it like any task: ``workflow.register(state, MyBatch())``.

    ``finish`` receives one entry per loaded item, in input order: the item's output, or
    the exception its last attempt raised (not wrapped). An error in ``load`` or ``finish``
    fails the attempt; ``config()`` (default ``TaskConfig()``, 3 retries) then re-runs the
    whole cycle, items included.

    Example::

        class Resize(cano.BatchTask[Step, str, bytes]):
            def concurrency(self) -> int:
                return 8

            def item_retry(self) -> cano.RetryMode:
                return cano.RetryMode.fixed(2, 0.1)

            async def load(self, res: cano.Resources) -> list[str]:
                return ["a.png", "b.png"]

            async def process_item(self, item: str) -> bytes:
                return await resize(item)

            async def finish(
                self, res: cano.Resources, results: list[bytes | BaseException]
            ) -> Step:
                failed = [r for r in results if isinstance(r, BaseException)]
                return Step.REVIEW if failed else Step.DONE
    """

    def config(self) -> TaskConfig:
        """Retry policy of the whole load → process → finish cycle; default ``TaskConfig()``."""
        return TaskConfig()

    def name(self) -> str:
        """The task's name; default the class's ``__qualname__``."""
        return type(self).__qualname__

    def concurrency(self) -> int:
        """How many items may be in flight at once; default 1, values below 1 count as 1."""
        return 1

    def item_retry(self) -> RetryMode:
        """Retry policy of each item; default ``RetryMode.none()`` (one attempt)."""
        return RetryMode.none()

    async def load(self, res: Resources[Any]) -> Sequence[I]:
        """Returns the items to process."""
        raise ConfigurationError(f"batch task {self.name()!r} does not implement load(res)")

    async def process_item(self, item: I) -> O:
        """Processes one item and returns its output (raising marks the item as failed)."""
        raise ConfigurationError(f"batch task {self.name()!r} does not implement process_item()")

    async def finish(self, res: Resources[Any], results: list[O | BaseException]) -> S:
        """Returns the next state, given every item's output or exception in input order."""
        raise ConfigurationError(
            f"batch task {self.name()!r} does not implement finish(res, results)"
        )


async def _drive_batch(batch: BatchTask[S, I, O], res: Resources[Any]) -> S:
    """The engine's batch cycle (one task attempt): load, process every item, finish."""
    loaded = await batch.load(res)
    items: Sequence[I] = loaded if isinstance(loaded, list | tuple) else list(loaded)
    results = await _process_all(batch, items)
    return await batch.finish(res, results)


async def _process_all(batch: BatchTask[S, I, O], items: Sequence[I]) -> list[O | BaseException]:
    """Runs ``process_item`` over ``items`` with at most ``concurrency()`` in flight.

    A fixed pool of workers pulls indices from one shared iterator: no task or semaphore
    per item, so the cost per item is one call. One worker runs in the calling coroutine;
    the others are tasks, cancelled (and awaited) if the attempt is cancelled or an item
    raises something that is not an ``Exception`` (``KeyboardInterrupt`` and the like fail
    the whole attempt).
    """
    width = batch.concurrency()
    if isinstance(width, bool) or not isinstance(width, int):
        raise ConfigurationError(
            f"batch task {batch.name()!r}: concurrency() returned {width!r}, expected an int"
        )
    retry = batch.item_retry()
    if not isinstance(retry, RetryMode):
        raise ConfigurationError(
            f"batch task {batch.name()!r}: item_retry() returned {retry!r}, "
            "expected a cano.RetryMode"
        )
    process: Callable[[I], Awaitable[O]] = batch.process_item
    if retry.max_attempts > 1:
        process = _with_item_retry(process, retry)

    results: list[Any] = [None] * len(items)
    todo = enumerate(items)

    async def worker() -> None:
        for index, item in todo:
            try:
                results[index] = await process(item)
            except Exception as exc:
                results[index] = exc

    width = min(max(width, 1), len(items))
    if width <= 1:
        await worker()
        return results
    loop = asyncio.get_running_loop()
    helpers = [loop.create_task(worker()) for _ in range(width - 1)]
    try:
        await worker()
        await asyncio.gather(*helpers)
    except BaseException:
        for helper in helpers:
            helper.cancel()
        await asyncio.wait(helpers)
        raise
    return results


def _with_item_retry(
    process: Callable[[I], Awaitable[O]], retry: RetryMode
) -> Callable[[I], Awaitable[O]]:
    """Wraps ``process`` in the per-item retry loop of ``retry``.

    The item's last exception is re-raised as is (no ``RetryExhaustedError``): it is what
    ``finish`` sees in the item's slot. No observer hooks, breaker or timeout apply here.
    """

    async def attempt_all(item: I) -> O:
        attempt = 1
        while True:
            try:
                return await process(item)
            except Exception:
                # The retry mode decides (cano_core): retry after a delay, or give up.
                delay = retry._retry_delay(attempt)
                if delay is None:
                    raise
                attempt += 1
            # Even a zero delay yields to the loop: a failing item never starves it.
            await asyncio.sleep(delay)

    return attempt_all
