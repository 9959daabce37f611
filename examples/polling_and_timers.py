"""Waiting inside a workflow: poll a job until it is ready, then wait on a timer.

``PollTask.poll`` is called until it returns ``Ready(next_state)``; ``Pending(delay)`` asks
for another poll after ``delay`` seconds. ``PollErrorPolicy.retry_on_error(n)`` tolerates
up to ``n`` consecutive errors. The attempt timeout bounds the whole poll loop.
``TimerTask`` waits for a duration (or until an aware datetime) and then decides.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import timedelta

import cano


class Job(enum.Enum):
    SUBMIT = enum.auto()
    WAIT_READY = enum.auto()
    COOL_DOWN = enum.auto()
    DONE = enum.auto()


class FakeJobService:
    """Stands in for a remote batch service: ready after a few polls, flaky once."""

    def __init__(self) -> None:
        self.polls = 0

    async def status(self) -> str:
        self.polls += 1
        if self.polls == 2:
            raise ConnectionError("status endpoint hiccup")
        return "done" if self.polls >= 4 else "running"


async def submit(res: cano.Resources) -> Job:
    print("submitted job")
    return Job.WAIT_READY


class WaitReady(cano.PollTask[Job]):
    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal().with_attempt_timeout(5)  # bounds the whole loop

    def on_poll_error(self) -> cano.PollErrorPolicy:
        return cano.PollErrorPolicy.retry_on_error(2)

    async def poll(self, res: cano.Resources) -> cano.Ready[Job] | cano.Pending:
        status = await res.get("jobs", FakeJobService).status()
        print(f"poll: {status}")
        if status == "done":
            return cano.Ready(Job.COOL_DOWN)
        return cano.Pending(0.01)


class CoolDown(cano.TimerTask[Job]):
    async def wait(self, res: cano.Resources) -> timedelta:
        return timedelta(milliseconds=20)

    async def after_wait(self, res: cano.Resources) -> Job:
        print("cool-down over")
        return Job.DONE


async def main() -> None:
    resources: cano.Resources = cano.Resources().insert("jobs", FakeJobService())
    workflow = (
        cano.Workflow[Job](resources)
        .register(Job.SUBMIT, submit)
        .register(Job.WAIT_READY, WaitReady())
        .register(Job.COOL_DOWN, CoolDown())
        .add_exit_state(Job.DONE)
    )
    final = await workflow.orchestrate(Job.SUBMIT)
    print(f"finished in {final.name} after {resources.get('jobs', FakeJobService).polls} polls")


if __name__ == "__main__":
    asyncio.run(main())
