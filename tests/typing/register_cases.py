"""What `mypy --strict` says about `register` (checked by tests/test_typing.py).

A line ending in `# error` must be flagged; every other line must pass.

The state and its task must agree on one enum. Where both could widen to `enum.Enum` (an
`async def` returning another enum's member), mypy accepts the call; the run refuses it
(`WorkflowError`: not a state of this workflow), and a `to=` declaration is checked by
`validate()`.
"""

from __future__ import annotations

import enum

import cano


class Step(enum.Enum):
    FETCH = 1
    DONE = 2


class Other(enum.Enum):
    ELSEWHERE = 1


async def fetch(res: cano.Resources) -> Step:
    return Step.DONE


async def fetch_bare() -> Step:
    return Step.DONE


async def returns_text(res: cano.Resources) -> str:
    return "DONE"


def not_async(res: cano.Resources) -> Step:
    return Step.DONE


class Fetch(cano.Task[Step]):
    async def run(self, res: cano.Resources) -> Step:
        return Step.DONE


class Elsewhere(cano.Task[Other]):
    async def run(self, res: cano.Resources) -> Other:
        return Other.ELSEWHERE


class Duck:
    async def run(self, res: cano.Resources) -> Step:
        return Step.DONE


class Poll(cano.PollTask[Step]):
    async def poll(self, res: cano.Resources) -> cano.Ready[Step] | cano.Pending:
        return cano.Ready(Step.DONE)


wf = cano.Workflow.bare()
wf.register(Step.FETCH, fetch)
wf.register(Step.FETCH, fetch_bare)
wf.register(Step.FETCH, Fetch())
wf.register(Step.FETCH, Duck())
wf.register(Step.FETCH, Poll())
wf.register(Step.FETCH, cano.task(fetch))
wf.register(Step.FETCH, Fetch(), to=[Step.DONE])
wf.register(Step.FETCH, Elsewhere())  # error
wf.register(Step.FETCH, returns_text)  # error
wf.register(Step.FETCH, not_async)  # error
wf.register(Step.FETCH, Fetch)  # error
wf.register("FETCH", fetch)  # error
