"""Child process: a stepped task that is killed in the middle of its loop.

Usage: ``child_stepped.py crash|resume STORE JOURNAL LAST HANG_AT`` where the walk goes from
cursor 0 to ``LAST`` and hangs (to be killed) when it is handed cursor ``HANG_AT``; with
``HANG_AT = -1`` it never hangs and says READY at its first step, so the parent kills it at
a random moment; any other negative ``HANG_AT`` just runs to the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import sys
from typing import Any

import cano
from child_common import Journal, ready, result


class S(enum.Enum):
    PREP = enum.auto()
    WALK = enum.auto()
    AFTER = enum.auto()
    DONE = enum.auto()


@dataclasses.dataclass(frozen=True)
class Cursor:
    n: int
    digest: str


class Walk(cano.SteppedTask[S, Cursor]):
    cursor_type = Cursor

    def __init__(self, journal: Journal, last: int, hang_at: int) -> None:
        self.journal, self.last, self.hang_at = journal, last, hang_at
        self.calls = 0

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def step(self, res: cano.Resources[Any], cursor: Cursor | None) -> Any:
        self.calls += 1
        n = cursor.n if cursor is not None else 0
        if self.calls == 1:
            described = "None" if cursor is None else f"{type(cursor).__name__}:{cursor.digest}"
            self.journal.note("first", n, described)
            if self.hang_at == -1:
                ready("looping")
        self.journal.note("start", n)
        if n == self.hang_at:
            ready(f"step {n}")
            await asyncio.Event().wait()  # killed here
        if self.hang_at == -1:
            await asyncio.sleep(0)
        self.journal.note("end", n)
        if n >= self.last:
            return cano.Done(S.AFTER)
        return cano.More(Cursor(n + 1, f"d{n + 1}"))


def main() -> None:
    mode, store_path, journal_path = sys.argv[1:4]
    last, hang_at = int(sys.argv[4]), int(sys.argv[5])
    journal = Journal(journal_path)

    async def prep() -> S:
        journal.note("prep")
        return S.WALK

    async def after() -> S:
        journal.note("after")
        return S.DONE

    with cano.RedbCheckpointStore(store_path) as store:
        wf: cano.Workflow[S] = cano.Workflow.bare()
        wf.register(S.PREP, prep).register_stepped(S.WALK, Walk(journal, last, hang_at))
        wf.register(S.AFTER, after).add_exit_state(S.DONE)
        wf.with_checkpoint_store(store).with_workflow_id("walk-1")

        async def go() -> S:
            if mode == "crash":
                return await wf.orchestrate(S.PREP)
            return await wf.resume_from("walk-1")

        result(asyncio.run(go()).name)


if __name__ == "__main__":
    main()
