"""Child process: a saga killed after a compensation (completion) row.

Usage: ``child_saga.py crash-ship|crash-row|resume STORE JOURNAL [KILL_SEQ]``.

- ``crash-ship``: reserve and charge complete, then the process hangs in ship (killed);
- ``crash-row``: the process hangs as soon as row ``KILL_SEQ`` is durable (an
  ``on_checkpoint`` hook that blocks the loop), i.e. right after that completion row;
- ``resume``: resumes ``order-9``; ship now fails, so the saga rolls back.

Outputs carry the pid of the process that produced them, so the journal shows which
process's output each compensation received.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sys
import time
from typing import Any

import cano
from child_common import Journal, ready, result


class S(enum.Enum):
    RESERVE = enum.auto()
    CHARGE = enum.auto()
    SHIP = enum.auto()
    DONE = enum.auto()


class Step(cano.CompensatableTask[S, dict[str, str]]):
    def __init__(self, name: str, nxt: S, journal: Journal) -> None:
        self._name, self.nxt, self.journal = name, nxt, journal

    def name(self) -> str:
        return self._name

    def config(self) -> cano.TaskConfig:
        return cano.TaskConfig.minimal()

    async def run(self, res: cano.Resources[Any]) -> tuple[S, dict[str, str]]:
        ref = f"{self._name}-{os.getpid()}"
        self.journal.note("do", self._name, ref)
        return self.nxt, {"ref": ref}

    async def compensate(self, res: cano.Resources[Any], output: dict[str, str]) -> None:
        self.journal.note("undo", self._name, output["ref"])


class KillAfterRow(cano.WorkflowObserver):
    def __init__(self, seq: int) -> None:
        self.seq = seq

    def on_checkpoint(self, workflow_id: str, sequence: int) -> None:
        if sequence == self.seq:
            ready(f"row {sequence}")
            time.sleep(60)  # blocks the loop: nothing after this row happens; killed here


def main() -> None:
    mode, store_path, journal_path = sys.argv[1:4]
    journal = Journal(journal_path)

    async def ship() -> S:
        journal.note("do", "ship")
        if mode == "crash-ship":
            ready("ship")
            await asyncio.Event().wait()  # killed here
        if mode == "resume":
            raise RuntimeError("carrier down")
        return S.DONE

    with cano.RedbCheckpointStore(store_path) as store:
        wf: cano.Workflow[S] = cano.Workflow.bare()
        wf.register_with_compensation(S.RESERVE, Step("reserve", S.CHARGE, journal))
        wf.register_with_compensation(S.CHARGE, Step("charge", S.SHIP, journal))
        wf.register(S.SHIP, cano.task(name="ship", config=cano.TaskConfig.minimal())(ship))
        wf.add_exit_state(S.DONE).with_checkpoint_store(store).with_workflow_id("order-9")
        if mode == "crash-row":
            wf.with_observer(KillAfterRow(int(sys.argv[4])))

        async def go() -> str:
            try:
                if mode == "resume":
                    return (await wf.resume_from("order-9")).name
                return (await wf.orchestrate(S.RESERVE)).name
            except cano.CanoError as err:
                return f"{type(err).__name__} {err.state}"

        result(asyncio.run(go()))


if __name__ == "__main__":
    main()
