"""Stopping runs cleanly: a total timeout, a cancellation token, and asyncio cancellation.

In every case the task in flight receives ``asyncio.CancelledError`` at its ``await``, its
``finally`` blocks run, resources are torn down, and then the run raises.
"""

from __future__ import annotations

import asyncio
import enum
import threading

import cano


class Step(enum.Enum):
    WORK = enum.auto()
    DONE = enum.auto()


class Connection:
    """A resource with a lifecycle: opened before the run, closed after it."""

    async def setup(self) -> None:
        print("  connection opened")

    async def teardown(self) -> None:
        print("  connection closed")


class LongWork(cano.Task[Step]):
    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources) -> Step:
        try:
            await asyncio.sleep(60)
        finally:
            print("  work interrupted; cleanup ran")
        return Step.DONE


def build() -> cano.Workflow[Step]:
    resources: cano.Resources = cano.Resources().insert("conn", Connection())
    return cano.Workflow[Step](resources).register(Step.WORK, LongWork()).add_exit_state(Step.DONE)


async def main() -> None:
    print("1. total timeout of 50 ms:")
    try:
        await build().with_total_timeout(0.05).orchestrate(Step.WORK)
    except cano.WorkflowTimeoutError as err:
        print(f"  -> {type(err).__name__}: limit={err.limit}s elapsed={err.elapsed:.3f}s")

    print("2. cancellation token fired from another thread:")
    token, handle = cano.CancellationToken.new()
    threading.Timer(0.05, handle.cancel).start()
    try:
        await build().orchestrate(Step.WORK, cancel=token)
    except cano.WorkflowCancelledError as err:
        print(f"  -> {type(err).__name__} in state {err.state}")

    print("3. cancelling the asyncio task:")
    run = asyncio.create_task(build().orchestrate(Step.WORK))
    await asyncio.sleep(0.05)
    run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        print(f"  -> CancelledError propagated; task.cancelled() = {run.cancelled()}")


if __name__ == "__main__":
    asyncio.run(main())
