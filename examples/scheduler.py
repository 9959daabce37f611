"""Scheduled workflows: an interval flow, a cron flow, and a manual flow with backoff.

- ``heartbeat`` runs every 0.5 s (measured from the end of the previous run);
- ``report`` runs on a cron schedule: every second, at the top of the second, in UTC;
- ``backfill`` runs only when triggered; it fails twice, trips after two consecutive
  failures, and runs again once reset.

All three share one connection resource, opened once at start and closed once at stop.
Ctrl-C or SIGTERM stops the scheduler gracefully; so does the end of ``--duration``::

    python examples/scheduler.py              # 2 seconds, then stop
    python examples/scheduler.py --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import signal
import sys
from datetime import UTC, datetime

import cano


class Step(enum.Enum):
    WORK = enum.auto()
    DONE = enum.auto()


class Connection:
    """A resource with a lifecycle; the scheduler sets it up once, not once per run."""

    async def setup(self) -> None:
        print("connection opened")

    async def teardown(self) -> None:
        print("connection closed")


class Heartbeat(cano.Task[Step]):
    def __init__(self) -> None:
        self.beats = 0

    async def run(self, res: cano.Resources) -> Step:
        self.beats += 1
        print(f"heartbeat #{self.beats}")
        return Step.DONE


@cano.task(config=cano.TaskConfig.minimal())
async def report(res: cano.Resources) -> Step:
    print(f"report at {datetime.now(UTC):%H:%M:%S} UTC")
    return Step.DONE


class Backfill(cano.Task[Step]):
    """Fails on its first two calls, like a dependency that is still starting."""

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()  # no retries inside a run: the scheduler backs off

    async def run(self, res: cano.Resources) -> Step:
        self.calls += 1
        await asyncio.sleep(0.05)
        if self.calls <= 2:
            raise ConnectionError("warehouse not reachable yet")
        print("backfill done")
        return Step.DONE


def one_step(resources: cano.Resources, task: cano.TaskLike[Step]) -> cano.Workflow[Step]:
    return cano.Workflow[Step](resources).register(Step.WORK, task).add_exit_state(Step.DONE)


async def finished(running: cano.RunningScheduler, flow_id: str) -> cano.FlowInfo:
    """Polls until the flow's run is over (a real program would just let it run)."""
    while True:
        info = running.status(flow_id)
        assert info is not None
        if info.status is not cano.FlowStatus.RUNNING:
            return info
        await asyncio.sleep(0.02)


async def drive_backfill(running: cano.RunningScheduler) -> None:
    """Triggers the manual flow until it trips, then resets it and triggers it again."""
    for _ in range(3):
        try:
            await running.trigger("backfill")
        except cano.WorkflowError as err:
            print(f"trigger refused: {err}")
            await running.reset_flow("backfill")
            await running.trigger("backfill")
        info = await finished(running, "backfill")
        print(f"backfill is {info.status.name}, failure streak {info.failure_streak}")


async def main(duration: float) -> None:
    resources: cano.Resources = cano.Resources().insert("db", Connection())
    scheduler = (
        cano.Scheduler()
        .every("heartbeat", one_step(resources, Heartbeat()), Step.WORK, 0.5)
        .cron("report", one_step(resources, report), Step.WORK, "* * * * * *")
        .manual("backfill", one_step(resources, Backfill()), Step.WORK)
        .set_backoff("backfill", cano.BackoffPolicy(initial=0.5, jitter=0.2, streak_limit=2))
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)

    async with scheduler.running(grace=5) as running:
        driver = asyncio.create_task(drive_backfill(running))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
        driver.cancel()
        print("stopping: in-flight runs are cancelled, then the connection is closed")

    for info in running.list():
        print(
            f"{info.id:<10} {info.status.name:<9} runs={info.run_count} "
            f"failure_streak={info.failure_streak}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds to run before stopping (default 2)"
    )
    args = parser.parse_args()
    # The scheduler logs flow events (started, finished, failed, backing off, tripped).
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s"
    )
    asyncio.run(main(args.duration))
